from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Date, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class PromiseStatus(StrEnum):
    OPEN = "open"
    KEPT = "kept"
    BROKEN = "broken"
    CANCELLED = "cancelled"


class Promise(Base):
    """A borrower's promise to pay ``amount`` by ``due_on``, taken by collections or the POS.

    The applied payments received from ``promised_on`` (the business date it was made) to
    ``due_on`` count toward it, as far as an earlier promise of the loan did not count them:
    money counts toward one promise at most (``rules.py``). ``paid_minor`` is what it counts,
    kept current by every payment and reversal (a broken promise's too: a payment in its
    window recorded after the break may yet keep it), and kept as it stood once cancelled.

    An approved repayment plan is a series of promises (``restructure_id``, ``plan_seq``) made
    on its approval date, each for what the plan asks *in total* by its due date: a borrower
    who pays ahead is ahead on every later installment, and a shortfall on one date breaks it.
    The installments share the plan's money.
    """

    __tablename__ = "promise"
    __table_args__ = (
        # The close looks for open promises past their date.
        Index("ix_promise_status_due_on", "status", "due_on"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    loan_id: Mapped[str] = mapped_column(ForeignKey("loan.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    paid_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    promised_on: Mapped[date] = mapped_column(Date)
    due_on: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(10))
    kept_on: Mapped[date | None] = mapped_column(Date)
    broken_on: Mapped[date | None] = mapped_column(Date)
    cancelled_on: Mapped[date | None] = mapped_column(Date)
    # When it was cancelled: it counts no money recorded after (null before migration 0040,
    # whose cancelled promises are cut by ``cancelled_on``'s day).
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    restructure_id: Mapped[str | None] = mapped_column(ForeignKey("restructure.id"), index=True)
    plan_seq: Mapped[int | None] = mapped_column(Integer)
