from datetime import date, datetime

from sqlalchemy import JSON, BigInteger, Boolean, Date, ForeignKey, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class Borrower(Base):
    __tablename__ = "borrower"
    __table_args__ = (UniqueConstraint("merchant_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    monthly_income_minor: Mapped[int | None] = mapped_column(BigInteger)
    credit_limit_minor: Mapped[int] = mapped_column(BigInteger)
    risk_grade: Mapped[str] = mapped_column(String(1), default="A")
    # The reason codes behind the grade, and the limit the policy restores towards after a
    # cut (docs/risk.md, "Grades and credit limits").
    risk_reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    limit_before_cut_minor: Mapped[int | None] = mapped_column(BigInteger)
    limit_changed_on: Mapped[date | None] = mapped_column(Date)
    # An admin set the limit since the grade last fell to D or E: lent up to it even at D or E,
    # to whom nothing more is lent otherwise (app/risk/limits.py).
    limit_overridden: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
