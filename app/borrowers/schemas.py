from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.api.fields import Currency, MoneyStr, Name, Reference
from app.money import format_minor
from app.risk.schemas import FlagRead
from app.risk.score import GRADE_LETTERS

if TYPE_CHECKING:
    from app.borrowers.service import BorrowerView

MIN_PHONE_DIGITS = 5


def _enough_digits(phone: str) -> str:
    if sum(c.isdigit() for c in phone) < MIN_PHONE_DIGITS:
        raise ValueError(f"must have at least {MIN_PHONE_DIGITS} digits")
    return phone


# Digits, with spaces, brackets and dashes between them, never at the end: "1----" was a
# phone number, and "+8613800138000   " another one beside "+8613800138000" (a tester's).
Phone = Annotated[
    str,
    Field(
        min_length=5,
        max_length=32,
        pattern=r"^\+?[0-9][0-9 ()-]{2,29}[0-9]$",
        description=f"at least {MIN_PHONE_DIGITS} digits",
    ),
    AfterValidator(_enough_digits),
]


class BorrowerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The merchant's own reference for its customer, as merchant_order_ref for its order: a
    # blank one, or one led or trailed by a space, would be a second customer to a look-up by it.
    external_id: Reference
    name: Name
    phone: Phone
    monthly_income: MoneyStr | None = None
    merchant_id: str | None = Field(
        default=None, max_length=40, description="Admin keys only; a merchant key implies its own."
    )
    currency: Currency | None = Field(
        default=None,
        description="ISO 4217, of the limit, the income and every loan (default: the service's)",
    )


class BorrowerUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credit_limit: MoneyStr


class BorrowerRead(BaseModel):
    id: str
    merchant_id: str
    external_id: str
    name: str
    phone: str
    currency: str
    monthly_income: str | None
    credit_limit: str
    exposure: str
    available_limit: str
    limit_overridden: bool = Field(
        description="an admin set the limit since the grade last fell to D or E: it is lent up "
        "to even at D or E"
    )
    risk_grade: str = Field(json_schema_extra={"enum": list(GRADE_LETTERS)})
    risk_score: int = Field(description="the worst open loan's score, as the grade is its grade")
    risk_reasons: list[str] = Field(description="the open flag codes behind the grade")
    open_flags: list[FlagRead] = Field(description="each open flag in the flag's shape")
    created_at: datetime

    @classmethod
    def from_view(cls, view: "BorrowerView") -> "BorrowerRead":
        b = view.borrower
        return cls(
            id=b.id,
            merchant_id=b.merchant_id,
            external_id=b.external_id,
            name=b.name,
            phone=b.phone,
            currency=b.currency,
            monthly_income=(
                None
                if b.monthly_income_minor is None
                else format_minor(b.monthly_income_minor, b.currency)
            ),
            credit_limit=format_minor(b.credit_limit_minor, b.currency),
            exposure=format_minor(view.exposure_minor, b.currency),
            available_limit=format_minor(view.available_minor, b.currency),
            limit_overridden=b.limit_overridden,
            risk_grade=b.risk_grade,
            risk_score=view.risk_score,
            risk_reasons=list(b.risk_reasons or []),
            open_flags=[FlagRead.from_model(f) for f in view.open_flags],
            created_at=b.created_at,
        )
