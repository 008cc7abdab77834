from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class RestructureKind(StrEnum):
    TERM_EXTENSION = "term_extension"
    PAYMENT_HOLIDAY = "payment_holiday"
    FEE_WAIVER = "fee_waiver"
    REPAYMENT_PLAN = "repayment_plan"


class RestructureStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class Restructure(Base):
    """A request for relief on a loan, decided by an admin (maker and checker).

    ``terms`` holds what the kind needs, as requested; for a repayment plan
    ``{"installments": [{"due_on": "YYYY-MM-DD", "amount_minor": n}, ...]}``. Once a plan is
    approved its installments live on as promises (``promise.restructure_id``), which payments
    keep and the close breaks.
    """

    __tablename__ = "restructure"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    loan_id: Mapped[str] = mapped_column(ForeignKey("loan.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(10))
    currency: Mapped[str] = mapped_column(String(3))
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(String(500))
    requested_by: Mapped[str | None] = mapped_column(String(40))
    requested_on: Mapped[date] = mapped_column(Date)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    decided_by: Mapped[str | None] = mapped_column(String(40))
    decided_on: Mapped[date | None] = mapped_column(Date)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_note: Mapped[str | None] = mapped_column(String(500))
