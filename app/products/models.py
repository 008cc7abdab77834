from datetime import datetime
from decimal import Decimal

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, Rate, UTCDateTime, utc_now


class Product(Base):
    __tablename__ = "product"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    annual_interest_rate: Mapped[Decimal] = mapped_column(Rate)
    amortization: Mapped[str] = mapped_column(String(20))
    term_options: Mapped[list[int]] = mapped_column(JSON)
    rounding: Mapped[str] = mapped_column(String(10))
    installment_multiple_of_minor: Mapped[int | None] = mapped_column(BigInteger)
    grace_days: Mapped[int] = mapped_column(Integer)
    late_fee_kind: Mapped[str | None] = mapped_column(String(10))
    late_fee_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    late_fee_percent: Mapped[Decimal | None] = mapped_column(Rate)
    late_fee_cap_minor: Mapped[int | None] = mapped_column(BigInteger)
    origination_fee_kind: Mapped[str | None] = mapped_column(String(10))
    origination_fee_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    origination_fee_percent: Mapped[Decimal | None] = mapped_column(Rate)
    origination_fee_collection: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
