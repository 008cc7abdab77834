from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.fields import MoneyStr
from app.money import format_minor
from app.promises.models import Promise
from app.relief.models import Restructure, RestructureKind, RestructureStatus
from app.relief.plans import PlanStatus, PromiseState, installments_of, progress

MAX_PLAN_INSTALLMENTS = 24
BUILT_KINDS = (RestructureKind.REPAYMENT_PLAN,)


class PlanInstallmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    due_on: date
    amount: MoneyStr


class RestructureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RestructureKind
    reason: str = Field(min_length=1, max_length=500)
    installments: list[PlanInstallmentCreate] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PLAN_INSTALLMENTS,
        description="repayment_plan: what the borrower pays by each date, dates ascending",
    )

    @field_validator("kind")
    @classmethod
    def _built(cls, kind: RestructureKind) -> RestructureKind:
        if kind not in BUILT_KINDS:
            raise ValueError(f"{kind.value} is not offered yet; repayment_plan is")
        return kind


class RestructureDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=500)


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
    plan: PlanRead

    @classmethod
    def from_model(cls, r: Restructure, carried: list[Promise] | None) -> "RestructureRead":
        """``carried``: the approved plan's promises in installment order (None before)."""
        money = r.currency
        terms = installments_of(r.terms)
        states = (
            None
            if r.status != RestructureStatus.APPROVED
            else [
                PromiseState(p.status, p.paid_minor, p.kept_on, p.broken_on) for p in carried or []
            ]
        )
        plan_status, rows = progress(terms, states)
        if plan_status is None:
            plan_status = (
                PlanStatus.REJECTED
                if r.status == RestructureStatus.REJECTED
                else PlanStatus.PROPOSED
            )
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
        plan = PlanRead(
            status=plan_status,
            starts_on=r.decided_on if r.status == RestructureStatus.APPROVED else None,
            total=format_minor(sum(i.amount_minor for i in terms), money),
            paid=format_minor(sum(row.paid_minor for row in rows), money),
            installments=installments,
        )
        return cls(
            id=r.id, loan_id=r.loan_id, kind=RestructureKind(r.kind),
            status=RestructureStatus(r.status), currency=money, reason=r.reason,
            requested_by=r.requested_by, requested_on=r.requested_on,
            requested_at=r.requested_at, decided_by=r.decided_by, decided_on=r.decided_on,
            decided_at=r.decided_at, decision_note=r.decision_note, plan=plan,
        )  # fmt: skip
