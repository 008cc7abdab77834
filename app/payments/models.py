from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class PaymentStatus(StrEnum):
    APPLIED = "applied"
    REVERSED = "reversed"


class ReversalReason(StrEnum):
    NSF = "nsf"
    CHARGEBACK = "chargeback"
    ERROR = "error"


class Payment(Base):
    __tablename__ = "payment"
    # A payment reported twice (by the POS and by the gateway, or a retry without an
    # Idempotency-Key) is caught by its external reference.
    __table_args__ = (
        UniqueConstraint("loan_id", "external_ref"),
        # The loans with a reversal dated on the close's date, which each close re-evaluates
        # (app/risk/service.py, _may_change_overnight): reversals are few, the payments of a
        # chunk's loans many.
        Index(
            "ix_payment_reversed_on",
            "reversed_on",
            postgresql_where=text("reversed_on IS NOT NULL"),
            sqlite_where=text("reversed_on IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    loan_id: Mapped[str] = mapped_column(ForeignKey("loan.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    # Indexed: the close looks up the payments received after the date it closes.
    received_on: Mapped[date] = mapped_column(Date, index=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_ref: Mapped[str | None] = mapped_column(String(100))
    # The gateway whose debit.succeeded recorded it (None: the POS or an admin did): only
    # that gateway may charge it back.
    gateway: Mapped[str | None] = mapped_column(ForeignKey("gateway.name"))
    status: Mapped[str] = mapped_column(String(10))
    reversal_reason: Mapped[str | None] = mapped_column(String(12))
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The business date the reversal counts from (the payment_reversal window, the ledger's
    # effective date): given by the client or the gateway, today by default.
    reversed_on: Mapped[date | None] = mapped_column(Date)
    # How the payment stood applied when it was reversed (installment_seq and the minor units
    # of fees, interest, principal): the replay rewrites the allocations, reconciliation
    # still needs to see where the bounced money had gone.
    allocation_at_reversal: Mapped[list[dict[str, int]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class PaymentAllocation(Base):
    """How a payment is split over installments; rewritten when a reversal replays the loan."""

    __tablename__ = "payment_allocation"

    payment_id: Mapped[str] = mapped_column(ForeignKey("payment.id"), primary_key=True)
    installment_seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    loan_id: Mapped[str] = mapped_column(ForeignKey("loan.id"), index=True)
    fees_minor: Mapped[int] = mapped_column(BigInteger)
    interest_minor: Mapped[int] = mapped_column(BigInteger)
    principal_minor: Mapped[int] = mapped_column(BigInteger)
