"""What the portfolio views read instead of the loan book (docs/portfolio.md).

Counts and balances are a *base* computed by the close plus the *deltas* every write appended
since; per-date loan snapshots feed roll rates; segment metrics and vintage counts are computed
once per close. No dashboard request scans the loans.
"""

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class PortfolioPosition(Base):
    """Loans and principal per merchant, product, status and bucket, as of the last rebase."""

    __tablename__ = "portfolio_position"

    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(8), primary_key=True)
    loans: Mapped[int] = mapped_column(BigInteger)
    principal_minor: Mapped[int] = mapped_column(BigInteger)


class PortfolioFlagCount(Base):
    """Open risk flags per merchant, product and code, as of the last rebase."""

    __tablename__ = "portfolio_flag_count"

    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    flags: Mapped[int] = mapped_column(BigInteger)


class PortfolioCollection(Base):
    """Payments received per day (net of reversals), as of the last rebase."""

    __tablename__ = "portfolio_collection"

    received_on: Mapped[date] = mapped_column(Date, primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)


class PortfolioDelta(Base):
    """One write's change to the counts since the last rebase: a loan leaving one position
    and entering another, a flag opened or closed, a payment received or reversed. Append
    only, so concurrent writers never contend on an aggregate row."""

    __tablename__ = "portfolio_delta"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True
    )
    # The loan that moved; none on the flag deltas, which are summed per segment and code.
    loan_id: Mapped[str | None] = mapped_column(String(40))
    # The loan's dimensions, copied so that a read filters the deltas without joining loans.
    merchant_id: Mapped[str] = mapped_column(String(40))
    product_code: Mapped[str] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str | None] = mapped_column(String(20))
    bucket: Mapped[str | None] = mapped_column(String(8))
    loans: Mapped[int] = mapped_column(Integer, default=0)
    principal_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    flag_code: Mapped[str | None] = mapped_column(String(40))
    flags: Mapped[int] = mapped_column(Integer, default=0)
    received_on: Mapped[date | None] = mapped_column(Date)
    collected_minor: Mapped[int] = mapped_column(BigInteger, default=0)


class LoanSnapshot(Base):
    """Each open loan's bucket and balance at each close: what roll rates compare."""

    __tablename__ = "loan_snapshot"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    loan_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40))
    product_code: Mapped[str] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    bucket: Mapped[str] = mapped_column(String(8))
    days_past_due: Mapped[int] = mapped_column(Integer)
    principal_minor: Mapped[int] = mapped_column(BigInteger)


class LoanSnapshotDay(Base):
    """A date whose snapshot the close took, open loans or none: roll rates compare the dates
    closed, and a close of a book with no open loan wrote no snapshot row to show for itself
    (a tester's roll rates refused it as "no close snapshot")."""

    __tablename__ = "loan_snapshot_day"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)


class RollRate(Base):
    """Loans moving between buckets from one close to another, per merchant and product.
    The close stores the day-on-day and month-on-month pairs; other pairs are computed on
    first request and kept, since closed snapshots do not change."""

    __tablename__ = "portfolio_roll_rate"

    from_date: Mapped[date] = mapped_column(Date, primary_key=True)
    to_date: Mapped[date] = mapped_column(Date, primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    from_bucket: Mapped[str] = mapped_column(String(8), primary_key=True)
    to_bucket: Mapped[str] = mapped_column(String(8), primary_key=True)
    loans: Mapped[int] = mapped_column(BigInteger)
    principal_minor: Mapped[int] = mapped_column(BigInteger)


class RollRatePair(Base):
    """A (from, to) pair whose roll rates are stored (possibly as no rows at all)."""

    __tablename__ = "portfolio_roll_rate_pair"

    from_date: Mapped[date] = mapped_column(Date, primary_key=True)
    to_date: Mapped[date] = mapped_column(Date, primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class VintageCount(Base):
    """Loans of an origination month by the month on book they first went 30+ DPD (-1:
    never), per merchant and product, as of the last close."""

    __tablename__ = "portfolio_vintage"

    origination_month: Mapped[str] = mapped_column(String(7), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    months_on_book_at_30_plus: Mapped[int] = mapped_column(Integer, primary_key=True)
    loans: Mapped[int] = mapped_column(BigInteger)
    principal_minor: Mapped[int] = mapped_column(BigInteger)


class SegmentColumns:
    """What a segment is measured by, at a close."""

    loans: Mapped[int] = mapped_column(BigInteger)
    principal_minor: Mapped[int] = mapped_column(BigInteger)
    dpd_30_plus_loans: Mapped[int] = mapped_column(BigInteger)
    dpd_90_plus_loans: Mapped[int] = mapped_column(BigInteger)
    # First-payment default over the recent cohort: loans whose first installment became
    # observable (due + N days) within the cohort window.
    fpd_10_cohort: Mapped[int] = mapped_column(BigInteger)
    fpd_10_loans: Mapped[int] = mapped_column(BigInteger)
    fpd_30_cohort: Mapped[int] = mapped_column(BigInteger)
    fpd_30_loans: Mapped[int] = mapped_column(BigInteger)
    # Loans current a month before (at the latest close on or before that day) and how many
    # of them are delinquent now.
    current_base: Mapped[int] = mapped_column(BigInteger)
    current_to_30_loans: Mapped[int] = mapped_column(BigInteger)


class SegmentMetric(SegmentColumns, Base):
    """One segment's health at one close: the history its alerts compare against."""

    __tablename__ = "portfolio_segment"
    __table_args__ = (Index("ix_portfolio_segment_dimension_segment", "dimension", "segment"),)

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    dimension: Mapped[str] = mapped_column(String(10), primary_key=True)
    segment: Mapped[str] = mapped_column(String(40), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)


class SegmentCell(SegmentColumns, Base):
    """The last close's segments at their finest grain: /v1/portfolio/segments sums them by
    its dimension within any scope (a merchant's products, one product's stores), which the
    per-dimension totals cannot answer. Only the last close's are kept."""

    __tablename__ = "portfolio_segment_cell"

    as_of: Mapped[date] = mapped_column(Date)
    merchant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    # The origination month, YYYY-MM.
    month: Mapped[str] = mapped_column(String(7), primary_key=True)


class SegmentAlert(Base):
    """A segment whose FPD or current-to-30 roll rate jumped above its trailing norm."""

    __tablename__ = "portfolio_alert"
    __table_args__ = (UniqueConstraint("as_of", "dimension", "segment", "currency", "metric"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    as_of: Mapped[date] = mapped_column(Date, index=True)
    dimension: Mapped[str] = mapped_column(String(10))
    segment: Mapped[str] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    metric: Mapped[str] = mapped_column(String(20))
    value: Mapped[Decimal] = mapped_column(Numeric(12, 6))
    baseline: Mapped[Decimal] = mapped_column(Numeric(12, 6))
    multiple: Mapped[Decimal] = mapped_column(Numeric(8, 4))
    loans: Mapped[int] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
