from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Date, ForeignKey, Identity, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class TransactionKind(StrEnum):
    DISBURSEMENT = "disbursement"
    PAYMENT = "payment"
    REVERSAL = "reversal"
    REFUND = "refund"
    LATE_FEE = "late_fee"
    FEE_WAIVER = "fee_waiver"
    # A replay's doing, never read back into one: a back-dated payoff shows an installment was
    # never late, so its late fee is taken back; a reversal of that payoff owes it again.
    LATE_FEE_FORGIVEN = "late_fee_forgiven"
    LATE_FEE_REINSTATED = "late_fee_reinstated"
    # A reversal on a cancelled loan: the refund owed back shrinks by what the payment paid.
    REFUND_REDUCED = "refund_reduced"


class LedgerTransaction(Base):
    """An immutable money movement on a loan; never updated, never deleted."""

    __tablename__ = "ledger_transaction"

    # SQLite only auto-increments an INTEGER primary key.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True
    )
    loan_id: Mapped[str] = mapped_column(ForeignKey("loan.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    effective_on: Mapped[date] = mapped_column(Date)
    payment_id: Mapped[str | None] = mapped_column(ForeignKey("payment.id"))
    installment_seq: Mapped[int | None] = mapped_column()
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
