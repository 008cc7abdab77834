from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, Rate, UTCDateTime, utc_now


class LoanStatus(StrEnum):
    ACTIVE = "active"
    DELINQUENT = "delinquent"
    DEFAULTED = "defaulted"
    CHARGED_OFF = "charged_off"
    PAID_OFF = "paid_off"
    CANCELLED = "cancelled"
    RESTRUCTURED = "restructured"


# Statuses the delinquency rules move between.
DELINQUENCY_STATUSES = (
    LoanStatus.ACTIVE,
    LoanStatus.RESTRUCTURED,
    LoanStatus.DELINQUENT,
    LoanStatus.DEFAULTED,
    LoanStatus.CHARGED_OFF,
)

# Statuses in which a loan still owes money and takes payments.
OPEN_STATUSES = (
    LoanStatus.ACTIVE,
    LoanStatus.DELINQUENT,
    LoanStatus.DEFAULTED,
    LoanStatus.CHARGED_OFF,
    LoanStatus.RESTRUCTURED,
)


class Loan(Base):
    """On PostgreSQL its pages are filled to 80 % (migration 0029): the nightly close rewrites
    every open loan's row, and the room keeps those updates off the indexes."""

    __tablename__ = "loan"
    __table_args__ = (
        UniqueConstraint("merchant_id", "merchant_order_ref"),
        # The few loans whose flags wait, which the close's risk step releases in its chunks.
        Index(
            "ix_loan_flags_deferred",
            "id",
            postgresql_where=text("flags_deferred"),
            sqlite_where=text("flags_deferred"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    borrower_id: Mapped[str] = mapped_column(ForeignKey("borrower.id"), index=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    product_code: Mapped[str] = mapped_column(ForeignKey("product.code"))
    currency: Mapped[str] = mapped_column(String(3))
    principal_minor: Mapped[int] = mapped_column(BigInteger)
    annual_interest_rate: Mapped[Decimal] = mapped_column(Rate)
    amortization: Mapped[str] = mapped_column(String(20))
    rounding: Mapped[str] = mapped_column(String(10))
    term: Mapped[int] = mapped_column(Integer)
    disbursed_on: Mapped[date] = mapped_column(Date)
    first_due_date: Mapped[date] = mapped_column(Date)
    merchant_order_ref: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), index=True)
    # Derived from the ledger and kept in step with it in the same transaction, so portfolio
    # reads and exposure never re-sum installments.
    principal_outstanding_minor: Mapped[int] = mapped_column(BigInteger)
    credit_balance_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    refund_due_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    days_past_due: Mapped[int] = mapped_column(Integer, default=0)
    bucket: Mapped[str] = mapped_column(String(8), default="current")
    delinquency_as_of: Mapped[date | None] = mapped_column(Date)
    # The bucket before the last change, and the day arrears were last cleared: the memory
    # the dpd_roll_forward and cure_relapse rules need.
    previous_bucket: Mapped[str] = mapped_column(String(8), default="current")
    cured_on: Mapped[date | None] = mapped_column(Date)
    # The first day of the loan's spell past due and the cure before it (cure_relapse): kept
    # while it stays past due, whichever installment is then the oldest missed; read again
    # from the history when a payment or reversal rewrites it.
    relapsed_on: Mapped[date | None] = mapped_column(Date)
    relapse_cured_on: Mapped[date | None] = mapped_column(Date)
    # The day the loan first went past 30 days past due: its vintage curve's event.
    ever_30_plus_on: Mapped[date | None] = mapped_column(Date)
    # Kept by the risk engine (app/risk/score.py) at each evaluation.
    risk_score: Mapped[int] = mapped_column(Integer, default=1000)
    risk_grade: Mapped[str] = mapped_column(String(1), default="A")
    # Booked past due (a book brought in): its flags wait for the next close or risk run, and
    # so do those of its payments, reversals and relief until then (app/risk/service.py).
    flags_deferred: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    paid_off_on: Mapped[date | None] = mapped_column(Date)
    cancelled_on: Mapped[date | None] = mapped_column(Date)
    # The business date of the last approved term extension: such a loan is `restructured`
    # while current (docs/relief.md).
    restructured_on: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, onupdate=utc_now)


class InstallmentStatus(StrEnum):
    PENDING = "pending"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    OVERDUE = "overdue"


class LoanInstallment(Base):
    __tablename__ = "loan_installment"

    loan_id: Mapped[str] = mapped_column(ForeignKey("loan.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    due_date: Mapped[date] = mapped_column(Date, index=True)
    principal_minor: Mapped[int] = mapped_column(BigInteger)
    interest_minor: Mapped[int] = mapped_column(BigInteger)
    # Scheduled fees (an origination fee); late fees are assessed later, with their own date
    # in the ledger, and summed here for reads and the set-based close.
    fees_minor: Mapped[int] = mapped_column(BigInteger)
    late_fees_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_principal_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_interest_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_fees_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    # Interest of later periods forgiven when the loan is paid off early.
    interest_waived_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    fees_waived_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_on: Mapped[date | None] = mapped_column(Date)
    # The day it stopped counting as missed: paid, or no more than the arrears tolerance left
    # unpaid (the replay's, with the tolerance in force then). How late it was settled counts
    # to this day (late_drift): a borrower 0.50 short, who paid the rest with the next
    # installment, was not a month late (a tester's: paid_on read so, and raised the flag).
    settled_on: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20))
    # Set once by the close that assessed this installment's late fee / sent its reminder:
    # reruns and catch-ups never charge or remind twice.
    late_fee_assessed_on: Mapped[date | None] = mapped_column(Date)
    reminded_on: Mapped[date | None] = mapped_column(Date)
