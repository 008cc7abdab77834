from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.api.fields import IsoDate, MoneyStr, Reference
from app.ledger.models import LedgerTransaction
from app.loans.models import LoanStatus
from app.loans.schemas import BalancesRead, balances_read
from app.money import format_minor
from app.payments.models import PaymentStatus, ReversalReason

if TYPE_CHECKING:
    from app.payments.service import PaymentView

Channel = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")]


class PaymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: MoneyStr
    received_on: IsoDate | None = Field(default=None, description="default: today")
    channel: Channel = "pos"
    external_ref: Reference | None = None


class PaymentReverse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: ReversalReason
    reversed_on: IsoDate | None = Field(
        default=None,
        description="the business date the reversal counts from (the payment_reversal flag's "
        "window, the ledger): between the payment's received_on and today; default: today",
    )


class AllocationRead(BaseModel):
    installment_seq: int
    fees: str
    interest: str
    principal: str


class LoanAfterPayment(BaseModel):
    status: LoanStatus
    balances: BalancesRead


class PaymentRead(BaseModel):
    id: str
    loan_id: str
    amount: str
    currency: str
    received_on: date
    channel: str
    external_ref: str | None
    status: PaymentStatus
    reversal_reason: ReversalReason | None
    reversed_at: datetime | None
    reversed_on: date | None
    allocation: list[AllocationRead]
    reversed_allocation: list[AllocationRead] | None = Field(
        description="a reversed payment: how it stood applied when it was reversed"
    )
    loan: LoanAfterPayment | None = None
    created_at: datetime


class TransactionRead(BaseModel):
    id: str
    loan_id: str
    kind: str = Field(
        description="disbursement, payment, reversal, refund (a cancellation: what the "
        "borrower is owed back), refund_reduced (a reversal on a cancelled loan: owed back "
        "no more), late_fee, fee_waiver, late_fee_forgiven (a replay found the fee charged "
        "too soon: the payments received by its night had settled the installment), "
        "late_fee_reinstated (owed again: such a payment reversed); amounts are positive, "
        "the kind says which way they count"
    )
    amount: str
    currency: str
    effective_on: date
    payment_id: str | None
    installment_seq: int | None
    note: str | None
    created_at: datetime


def payment_read(view: "PaymentView") -> PaymentRead:
    p, cur = view.payment, view.currency
    return PaymentRead(
        id=p.id,
        loan_id=p.loan_id,
        amount=format_minor(p.amount_minor, cur),
        currency=cur,
        received_on=p.received_on,
        channel=p.channel,
        external_ref=p.external_ref,
        status=PaymentStatus(p.status),
        reversal_reason=ReversalReason(p.reversal_reason) if p.reversal_reason else None,
        reversed_at=p.reversed_at,
        reversed_on=p.reversed_on,
        allocation=[
            _allocation_read(a.installment_seq, a.fees_minor, a.interest_minor,
                             a.principal_minor, cur)
            for a in view.allocations
        ],
        reversed_allocation=(
            [_allocation_read(**a, currency=cur) for a in p.allocation_at_reversal]
            if p.allocation_at_reversal is not None
            else None
        ),
        loan=(
            LoanAfterPayment(status=LoanStatus(view.loan.loan.status),
                             balances=balances_read(view.loan))
            if view.loan
            else None
        ),
        created_at=p.created_at,
    )  # fmt: skip


def transaction_read(t: LedgerTransaction) -> TransactionRead:
    return TransactionRead(
        id=str(t.id), loan_id=t.loan_id, kind=t.kind,
        amount=format_minor(t.amount_minor, t.currency), currency=t.currency,
        effective_on=t.effective_on, payment_id=t.payment_id, installment_seq=t.installment_seq,
        note=t.note, created_at=t.created_at,
    )  # fmt: skip


def _allocation_read(
    installment_seq: int,
    fees_minor: int,
    interest_minor: int,
    principal_minor: int,
    currency: str,
) -> AllocationRead:
    return AllocationRead(
        installment_seq=installment_seq, fees=format_minor(fees_minor, currency),
        interest=format_minor(interest_minor, currency),
        principal=format_minor(principal_minor, currency),
    )  # fmt: skip
