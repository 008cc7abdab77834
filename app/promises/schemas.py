from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from app.api.fields import IsoDate, MoneyStr, Reason
from app.money import format_minor
from app.promises.models import Promise, PromiseStatus


class PromiseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: MoneyStr
    due_on: IsoDate
    note: Reason | None = None


class PromiseRead(BaseModel):
    id: str
    loan_id: str
    amount: str
    currency: str
    paid: str = Field(
        description="what the payments received from promised_on to due_on count toward it: "
        "money counts toward one promise at most, the earlier promise first"
    )
    promised_on: date = Field(description="the business date the promise was made on")
    due_on: date
    status: PromiseStatus
    kept_on: date | None
    broken_on: date | None
    cancelled_on: date | None
    note: str | None
    created_by: str | None
    created_at: datetime

    @classmethod
    def from_model(cls, p: Promise) -> "PromiseRead":
        return cls(
            id=p.id, loan_id=p.loan_id, amount=format_minor(p.amount_minor, p.currency),
            currency=p.currency, paid=format_minor(p.paid_minor, p.currency),
            promised_on=p.promised_on, due_on=p.due_on, status=PromiseStatus(p.status),
            kept_on=p.kept_on, broken_on=p.broken_on, cancelled_on=p.cancelled_on, note=p.note,
            created_by=p.created_by, created_at=p.created_at,
        )  # fmt: skip
