from datetime import date, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationInfo, field_validator

from app.api.fields import IsoDate, MoneyStr, Reason
from app.money import format_minor
from app.promises.models import Promise
from app.relief.models import Restructure, RestructureKind, RestructureStatus
from app.relief.plans import PlanStatus, PromiseState, installments_of, progress

MAX_PLAN_INSTALLMENTS = 24
MAX_HOLIDAY_MONTHS = 3
# Over a loan's life: holidays are interest-free, and one asked after another deferred it
# without end (a tester approved 1 + 2 months at once, and could go on).
MAX_HOLIDAY_MONTHS_PER_LOAN = 6
MAX_EXTENSION_MONTHS = 24


class PlanInstallmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    due_on: IsoDate
    amount: MoneyStr


class RestructureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RestructureKind
    reason: Reason
    installments: list[PlanInstallmentCreate] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PLAN_INSTALLMENTS,
        description="repayment_plan: what the borrower pays by each date, dates ascending",
    )
    amount: MoneyStr | None = Field(
        default=None, description="fee_waiver: the most to forgive (default: every fee due)"
    )
    months: Annotated[int, Strict()] | None = Field(
        default=None,
        ge=1,
        le=MAX_EXTENSION_MONTHS,
        description=f"payment_holiday: how many months (at most {MAX_HOLIDAY_MONTHS}, and "
        f"{MAX_HOLIDAY_MONTHS_PER_LOAN} over the loan's life) the installments not yet due "
        "move; term_extension: how many installments the loan gains",
    )

    @field_validator("installments", "amount", "months", mode="before")
    @classmethod
    def _of_the_kind(cls, value: object, info: ValidationInfo) -> object:
        """Each kind takes its own field and refuses the others', before their shape is
        checked: an empty plan on a holiday was told a plan needs an installment (a
        tester's)."""
        kind = info.data.get("kind")
        if value is not None and kind is not None and info.field_name != FIELD_OF_KIND[kind]:
            raise ValueError(f"is not a field of a {kind.value}")
        return value


FIELD_OF_KIND = {
    RestructureKind.REPAYMENT_PLAN: "installments",
    RestructureKind.FEE_WAIVER: "amount",
    RestructureKind.PAYMENT_HOLIDAY: "months",
    RestructureKind.TERM_EXTENSION: "months",
}


class RestructureDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Reason | None = None


class PlanInstallmentRead(BaseModel):
    seq: int
    due_on: date
    amount: str
    paid: str = Field(description="this installment's share of the payments since approval")
    status: str = Field(description="proposed (not approved), open, kept, broken or cancelled")
    kept_on: date | None
    broken_on: date | None


class PlanRead(BaseModel):
    status: PlanStatus
    starts_on: date | None = Field(description="the business date of approval")
    total: str
    paid: str
    installments: list[PlanInstallmentRead]


class WaiverRead(BaseModel):
    requested: str | None = Field(description="the most to forgive; null: every fee due")
    waived: str | None = Field(description="what was forgiven on approval")


class MovedInstallment(BaseModel):
    seq: int
    due_date_was: date
    due_date: date


class HolidayRead(BaseModel):
    months: int
    moved: list[MovedInstallment] | None = Field(description="on approval: the new due dates")


class ExtensionRead(BaseModel):
    months: int
    term_was: int | None = Field(description="on approval: the loan's term before")
    term: int | None = Field(description="on approval: the loan's term after")
    installment_was: str | None = Field(
        description="on approval: what the first installment re-amortised (the next one "
        "whose principal is still owed) asked before, its amount less what was paid on it"
    )
    installment: str | None = Field(
        description="on approval: what that installment asks after, its amount less what is "
        "paid on it"
    )


class RestructureRead(BaseModel):
    id: str
    loan_id: str
    kind: RestructureKind
    status: RestructureStatus
    currency: str
    reason: str
    requested_by: str | None
    requested_on: date = Field(description="the business date of the request")
    requested_at: datetime
    decided_by: str | None
    decided_on: date | None
    decided_at: datetime | None
    decision_note: str | None
    plan: PlanRead | None = Field(description="a repayment_plan's installments and progress")
    waiver: WaiverRead | None = Field(description="a fee_waiver's amounts")
    holiday: HolidayRead | None = Field(description="a payment_holiday's months and moves")
    extension: ExtensionRead | None = Field(description="a term_extension's months and effect")

    @classmethod
    def from_model(cls, r: Restructure, carried: list[Promise] | None) -> "RestructureRead":
        """``carried``: an approved plan's promises in installment order (None before)."""
        plan = waiver = holiday = extension = None
        if r.kind == RestructureKind.FEE_WAIVER:
            waiver = _waiver(r)
        elif r.kind == RestructureKind.PAYMENT_HOLIDAY:
            holiday = HolidayRead.model_validate(r.terms)
        elif r.kind == RestructureKind.TERM_EXTENSION:
            extension = _extension(r)
        else:
            plan = _plan(r, carried)
        return cls(
            id=r.id, loan_id=r.loan_id, kind=RestructureKind(r.kind),
            status=RestructureStatus(r.status), currency=r.currency, reason=r.reason,
            requested_by=r.requested_by, requested_on=r.requested_on,
            requested_at=r.requested_at, decided_by=r.decided_by, decided_on=r.decided_on,
            decided_at=r.decided_at, decision_note=r.decision_note, plan=plan, waiver=waiver,
            holiday=holiday, extension=extension,
        )  # fmt: skip


def _waiver(r: Restructure) -> WaiverRead:
    requested, waived = r.terms.get("amount_minor"), r.terms.get("waived_minor")
    return WaiverRead(
        requested=None if requested is None else format_minor(requested, r.currency),
        waived=None if waived is None else format_minor(waived, r.currency),
    )


def _extension(r: Restructure) -> ExtensionRead:
    def money(key: str) -> str | None:
        minor = r.terms.get(key)
        return None if minor is None else format_minor(minor, r.currency)

    return ExtensionRead(
        months=r.terms["months"], term_was=r.terms.get("term_was"), term=r.terms.get("term"),
        installment_was=money("installment_was_minor"), installment=money("installment_minor"),
    )  # fmt: skip


def _plan(r: Restructure, carried: list[Promise] | None) -> PlanRead:
    money = r.currency
    terms = installments_of(r.terms)
    approved = r.status == RestructureStatus.APPROVED
    states = (
        [PromiseState(p.status, p.paid_minor, p.kept_on, p.broken_on) for p in carried or []]
        if approved
        else None
    )
    plan_status, rows = progress(terms, states)
    if plan_status is None:
        rejected = r.status == RestructureStatus.REJECTED
        plan_status = PlanStatus.REJECTED if rejected else PlanStatus.PROPOSED
    installments = [
        PlanInstallmentRead(
            seq=row.seq,
            due_on=row.due_on,
            amount=format_minor(row.amount_minor, money),
            paid=format_minor(row.paid_minor, money),
            status=row.status,
            kept_on=row.kept_on,
            broken_on=row.broken_on,
        )
        for row in rows
    ]
    return PlanRead(
        status=plan_status,
        starts_on=r.decided_on if approved else None,
        total=format_minor(sum(i.amount_minor for i in terms), money),
        paid=format_minor(sum(row.paid_minor for row in rows), money),
        installments=installments,
    )
