from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
)

from app.api.fields import Currency, MoneyStr, Name, RateStr, Term
from app.loans.schedule import OFFERED_TERMS, Amortization, FeeCollection
from app.money import Rounding, format_minor, format_rate
from app.products.models import Product

# A letter or digit first: a code of dots alone ("..") is a path segment every client
# normalises away, so its Location (/v1/products/..) would never reach it.
# Named where it is looked up too (a loan's product, a portfolio filter): the portfolio's
# filter took 40 characters, and a product of 41 could not be sliced by (a tester's).
PRODUCT_CODE_MAX_LENGTH = 64
ProductCode = Annotated[
    str,
    Field(
        min_length=1, max_length=PRODUCT_CODE_MAX_LENGTH, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    ),
]


def _at_most_one(rate: str) -> str:
    if Decimal(rate) > 1:
        raise ValueError("must be at most 1 (100 % a year)")
    return rate


def _distinct(terms: list[int]) -> list[int]:
    if len(set(terms)) != len(terms):
        raise ValueError("must not repeat a term")
    return terms


# Checked with the body's other fields, so one answer names every field at fault.
AnnualRate = Annotated[RateStr, AfterValidator(_at_most_one)]
TermOptions = Annotated[
    list[Term], Field(min_length=1, max_length=len(OFFERED_TERMS)), AfterValidator(_distinct)
]


class FeeKind(StrEnum):
    FIXED = "fixed"
    PERCENT = "percent"


class _FeeAmount(BaseModel):
    """A fixed fee charges its ``amount``, a percent fee its ``percent``."""

    model_config = ConfigDict(extra="forbid")

    kind: FeeKind
    amount: MoneyStr | None = None
    percent: RateStr | None = Field(default=None, description="of the amount it applies to")


class LateFeePolicy(_FeeAmount):
    """Charged per overdue installment after the grace days, at most once per installment."""

    cap_per_installment: MoneyStr | None = Field(
        default=None, description="required of a percent fee; a fixed fee's at least its amount"
    )


class OriginationFee(_FeeAmount):
    """Charged on the principal at origination: all with the first installment, or spread."""

    collection: FeeCollection = FeeCollection.UPFRONT


def _of_the_kind(value: object, info: ValidationInfo) -> object:
    """A fixed fee gives its amount, a percent fee its percent, and not the other; a percent
    late fee its cap. Checked with the body's other fields, each named, so one answer names
    every field at fault (checked after them, these waited for a second request: a tester's)."""
    kind = info.data.get("kind")
    if kind is None:
        return value  # the kind is at fault, and named
    field, gives = info.field_name, "amount" if kind is FeeKind.FIXED else "percent"
    if field == gives and value is None:
        raise ValueError(f"a {kind} fee gives its {gives}")
    if field in ("amount", "percent") and field != gives and value is not None:
        raise ValueError(f"a {kind} fee gives no {field}")
    if field == "cap_per_installment" and kind is FeeKind.PERCENT and value is None:
        raise ValueError(
            "a percent fee grows with what is unpaid: give the most one installment is charged"
        )
    amount = info.data.get("amount")  # a fixed fee's, when valid
    if field == "cap_per_installment" and isinstance(value, str) and amount is not None:
        # A fixed fee is charged at most once per installment, so its cap can only lower it.
        try:
            below = Decimal(value) < Decimal(amount)
        except ArithmeticError:
            return value  # not an amount: its own check names it
        if below:
            raise ValueError(
                f"a fixed fee is charged at most once per installment, so a cap of {value} "
                f"below its amount {amount} would silently lower it"
            )
    return value


def _required_by_kind(percent_fee_gives: list[str]) -> dict[str, Any]:
    """What each kind requires, in the document too (JSON Schema's if/then): the fields read
    optional to a client generating its types from it."""
    return {"allOf": [
        {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
         "then": {"required": gives}}
        for kind, gives in ((FeeKind.FIXED, ["amount"]), (FeeKind.PERCENT, percent_fee_gives))
    ]}  # fmt: skip


class LateFeeIn(LateFeePolicy):
    """A late fee as a product is created with it (products stored before a percent fee's cap
    was required are read as they are)."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        json_schema_extra=_required_by_kind(["percent", "cap_per_installment"]),
    )

    _of_the_kind = field_validator("amount", "percent", "cap_per_installment", mode="before")(
        _of_the_kind
    )


class OriginationFeeIn(OriginationFee):
    model_config = ConfigDict(
        extra="forbid", validate_default=True, json_schema_extra=_required_by_kind(["percent"])
    )

    _of_the_kind = field_validator("amount", "percent", mode="before")(_of_the_kind)


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ProductCode
    name: Name
    currency: Currency | None = None
    annual_interest_rate: AnnualRate
    amortization: Amortization
    term_options: TermOptions
    rounding: Rounding = Rounding.HALF_EVEN
    installment_multiple_of: MoneyStr | None = None
    grace_days: Annotated[int, Strict()] = Field(default=0, ge=0, le=90)
    late_fee: LateFeeIn | None = None
    origination_fee: OriginationFeeIn | None = None


class ProductRead(BaseModel):
    code: str
    name: str
    currency: str
    annual_interest_rate: str
    amortization: Amortization
    term_options: list[int]
    rounding: Rounding
    installment_multiple_of: str | None
    grace_days: int
    late_fee: LateFeePolicy | None
    origination_fee: OriginationFee | None
    created_at: datetime

    @classmethod
    def from_model(cls, product: Product) -> "ProductRead":
        def money(minor: int | None) -> str | None:
            return None if minor is None else format_minor(minor, product.currency)

        def rate(value: Decimal | None) -> str | None:
            return None if value is None else format_rate(value)

        late_fee = None
        if product.late_fee_kind:
            late_fee = LateFeePolicy(
                kind=FeeKind(product.late_fee_kind),
                amount=money(product.late_fee_amount_minor),
                percent=rate(product.late_fee_percent),
                cap_per_installment=money(product.late_fee_cap_minor),
            )
        origination_fee = None
        if product.origination_fee_kind:
            origination_fee = OriginationFee(
                kind=FeeKind(product.origination_fee_kind),
                amount=money(product.origination_fee_amount_minor),
                percent=rate(product.origination_fee_percent),
                collection=FeeCollection(
                    product.origination_fee_collection or FeeCollection.UPFRONT
                ),
            )
        return cls(
            code=product.code,
            name=product.name,
            currency=product.currency,
            annual_interest_rate=format_rate(product.annual_interest_rate),
            amortization=Amortization(product.amortization),
            term_options=product.term_options,
            rounding=Rounding(product.rounding),
            installment_multiple_of=money(product.installment_multiple_of_minor),
            grace_days=product.grace_days,
            late_fee=late_fee,
            origination_fee=origination_fee,
            created_at=product.created_at,
        )
