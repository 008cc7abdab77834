"""The portfolio views dashboards poll: built from the aggregates the close and the writes
keep (app/portfolio/positions.py, close.py), never from a scan of the loans."""

from collections import defaultdict
from collections.abc import Mapping
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.config import get_settings
from app.delinquency import service as delinquency
from app.delinquency.rules import Bucket
from app.errors import Forbidden, InvalidRequest
from app.loans.models import LoanStatus
from app.money import MINOR_DIGITS, format_minor
from app.portfolio import close as portfolio_close
from app.portfolio import positions
from app.portfolio.models import (
    RollRate,
    RollRatePair,
    SegmentAlert,
    SegmentCell,
    VintageCount,
)
from app.portfolio.positions import Scope, Tally
from app.portfolio.schemas import (
    BucketPosition,
    CohortRate,
    Collected,
    DelinquencyRate,
    DelinquencyRates,
    LoansAndPrincipal,
    RollCell,
    RollFromCurrent,
    RollRatesRead,
    Segment,
    SegmentsRead,
    SummaryRead,
    Vintage,
    VintagePoint,
    VintagesRead,
)

CLOSED_STATUSES = (LoanStatus.PAID_OFF.value, LoanStatus.CANCELLED.value)
RATE_PLACES = Decimal("0.0001")


def scope_for(
    principal: Principal,
    *,
    merchant_id: str | None,
    product_code: str | None,
    currency: str | None,
) -> Scope:
    """A merchant key sees its own merchant's book only; the others see any or all."""
    principal.require(Role.MERCHANT, Role.DASHBOARD)
    if principal.is_merchant:
        if merchant_id is not None and merchant_id != principal.merchant_id:
            raise Forbidden("a merchant key sees its own merchant's portfolio only")
        merchant_id = principal.merchant_id
    currency = currency or get_settings().default_currency
    if currency not in MINOR_DIGITS:
        raise InvalidRequest.field("currency", f"{currency} is not a supported currency")
    return Scope(currency=currency, merchant_id=merchant_id, product_code=product_code)


def format_rate(numerator: int, denominator: int) -> str | None:
    if denominator == 0:
        return None
    return str((Decimal(numerator) / Decimal(denominator)).quantize(RATE_PLACES, ROUND_HALF_UP))


def _money(tally: Tally, currency: str) -> LoansAndPrincipal:
    return LoansAndPrincipal(
        count=tally.count, principal_outstanding=format_minor(tally.principal_minor, currency)
    )


async def summary(session: AsyncSession, scope: Scope) -> SummaryRead:
    deltas = await positions.pending_deltas(session, scope)
    by_position = await positions.positions(session, scope, deltas)
    by_status: dict[str, Tally] = defaultdict(Tally)
    by_bucket: dict[str, Tally] = {bucket.value: Tally() for bucket in Bucket}
    book = Tally()
    for (status, bucket), tally in by_position.items():
        by_status[status].count += tally.count
        by_status[status].principal_minor += tally.principal_minor
        if status in CLOSED_STATUSES:
            continue
        by_bucket[bucket].count += tally.count
        by_bucket[bucket].principal_minor += tally.principal_minor
        book.count += tally.count
        book.principal_minor += tally.principal_minor

    def delinquency_rate(buckets: tuple[str, ...]) -> DelinquencyRate:
        count = sum(by_bucket[b].count for b in buckets)
        balance = sum(by_bucket[b].principal_minor for b in buckets)
        return DelinquencyRate(
            by_count=format_rate(count, book.count),
            by_balance=format_rate(balance, book.principal_minor),
        )

    today = clock.today()
    collected_today = await positions.collected(session, scope, deltas, since=today, until=today)
    month_to_date = await positions.collected(
        session, scope, deltas, since=today.replace(day=1), until=today
    )
    as_of = await delinquency.business_date(session)
    currency = scope.currency
    return SummaryRead(
        as_of=as_of,
        today=today,
        currency=currency,
        merchant_id=scope.merchant_id,
        product_code=scope.product_code,
        loans=_money(book, currency),
        by_status={status: _money(t, currency) for status, t in sorted(by_status.items())},
        by_bucket={
            bucket: BucketPosition(**_money(t, currency).model_dump(), label=Bucket(bucket).label)
            for bucket, t in by_bucket.items()
        },
        delinquency_rate=DelinquencyRates(
            past_30=delinquency_rate(portfolio_close.PAST_30_BUCKETS),
            past_90=delinquency_rate((Bucket.DPD_90_PLUS.value,)),
        ),
        open_flags=await positions.open_flags(session, scope, deltas),
        collected=Collected(
            today=format_minor(collected_today, currency),
            month_to_date=format_minor(month_to_date, currency),
        ),
    )


async def roll_rates(
    session: AsyncSession, scope: Scope, *, from_date: date | None, to_date: date | None
) -> RollRatesRead:
    """The bucket transition matrix between two closes, over the loans open at both. Without
    dates: from the previous close to the last one."""
    dates = await portfolio_close.snapshot_dates(session)
    defaults = from_date is None and to_date is None
    to_date = to_date or (dates[-1] if dates else None)
    earlier = [d for d in dates if to_date is not None and d < to_date]
    if defaults and not earlier:
        # A dashboard's default poll before the second close: nothing has rolled yet.
        return _roll_matrix(None, to_date, scope.currency, {})
    if to_date is None:
        raise InvalidRequest.field("to", "no close has run yet: there is nothing to compare")
    if from_date is None:
        if not earlier:
            raise InvalidRequest.field("from", f"no close before {to_date} to compare with")
        from_date = earlier[-1]
    if from_date >= to_date:
        raise InvalidRequest.field("from", "must be before to")
    for name, day in (("from", from_date), ("to", to_date)):
        if day not in dates:
            raise InvalidRequest.field(name, f"no close snapshot for {day}")
    if await session.get(RollRatePair, (from_date, to_date)) is None:
        await portfolio_close.store_roll_rates(session, from_date, to_date)
    rows = await session.execute(
        select(RollRate.from_bucket, RollRate.to_bucket, func.sum(RollRate.loans),
               func.sum(RollRate.principal_minor))
        .where(RollRate.from_date == from_date, RollRate.to_date == to_date,
               *scope.where(RollRate.merchant_id, RollRate.product_code, RollRate.currency))
        .group_by(RollRate.from_bucket, RollRate.to_bucket)
    )  # fmt: skip
    cells = {(start, end): Tally(int(loans), int(principal or 0))
             for start, end, loans, principal in rows}  # fmt: skip
    return _roll_matrix(from_date, to_date, scope.currency, cells)


def _roll_matrix(
    from_date: date | None,
    to_date: date | None,
    currency: str,
    cells: dict[tuple[str, str], Tally],
) -> RollRatesRead:
    """Every bucket to every bucket: the loans that rolled, their principal and row share."""
    matrix: dict[str, dict[str, RollCell]] = {}
    for start in Bucket:
        row_total = sum(cells.get((start.value, end.value), Tally()).count for end in Bucket)
        matrix[start.value] = {}
        for end in Bucket:
            cell = cells.get((start.value, end.value), Tally())
            matrix[start.value][end.value] = RollCell(
                **_money(cell, currency).model_dump(), rate=format_rate(cell.count, row_total)
            )
    return RollRatesRead(from_date=from_date, to_date=to_date, currency=currency, matrix=matrix)


def months_between(later: date, earlier: date) -> int:
    """Whole months, counted as app.db.months_between counts them in SQL."""
    months = (later.year - earlier.year) * 12 + later.month - earlier.month
    return months - 1 if later.day < earlier.day else months


async def vintages(session: AsyncSession, scope: Scope) -> VintagesRead:
    """For each origination month, the share of its loans (and principal) that have ever been
    more than 30 days past due, by month on book, up to the months every loan of the vintage
    has completed by the business date: none of a month not over yet."""
    as_of = await delinquency.business_date(session)
    if as_of is None:  # the vintages are counted by the close
        return VintagesRead(as_of=None, currency=scope.currency, vintages=[])
    rows = await session.execute(
        select(VintageCount.origination_month, VintageCount.months_on_book_at_30_plus,
               func.sum(VintageCount.loans), func.sum(VintageCount.principal_minor))
        .where(*scope.where(VintageCount.merchant_id, VintageCount.product_code,
                            VintageCount.currency))
        .group_by(VintageCount.origination_month, VintageCount.months_on_book_at_30_plus)
    )  # fmt: skip
    by_month: dict[str, dict[int, Tally]] = defaultdict(dict)
    for month, months_to_30, loans, principal in rows:
        by_month[month][int(months_to_30)] = Tally(int(loans), int(principal or 0))
    result = []
    for month in sorted(by_month):
        counts = by_month[month]
        loans = sum(t.count for t in counts.values())
        principal = sum(t.principal_minor for t in counts.values())
        first = date.fromisoformat(f"{month}-01")
        last_day = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        # Month on book k is a loan's (k+1)-th month: its point is whole once the vintage's
        # last loan has completed k+1 months.
        completed = months_between(as_of, last_day)
        curve, ever, ever_principal = [], 0, 0
        for months_on_book in range(completed):
            tally = counts.get(months_on_book, Tally())
            ever, ever_principal = ever + tally.count, ever_principal + tally.principal_minor
            curve.append(VintagePoint(
                months_on_book=months_on_book,
                ever_30_plus_rate=format_rate(ever, loans),
                ever_30_plus_balance_rate=format_rate(ever_principal, principal),
            ))  # fmt: skip
        principal_text = format_minor(principal, scope.currency)
        result.append(
            Vintage(origination_month=month, loans=loans, principal=principal_text, curve=curve)
        )
    return VintagesRead(as_of=as_of, currency=scope.currency, vintages=result)


# A segment's measures: every one a count, so a segment sums its cells.
_MEASURES = tuple(c.name for c in SegmentCell.__table__.columns if c.type.python_type is int)


async def segments(session: AsyncSession, scope: Scope, *, by: str) -> SegmentsRead:
    """Per segment, as of the last close: size, first-payment default, current-to-30 roll
    rate, 30+ and 90+ rates; within the scope (a merchant key sees its own store)."""
    cell = SegmentCell.__table__.c
    as_of = await session.scalar(select(func.max(SegmentCell.as_of)))
    segment = {"merchant": cell.merchant_id, "product": cell.product_code,
               "vintage": cell.month}[by]  # fmt: skip
    rows = await session.execute(
        select(segment, *(func.sum(cell[name]).label(name) for name in _MEASURES))
        .where(cell.currency == scope.currency,
               *scope.where(cell.merchant_id, cell.product_code, None))
        .group_by(segment)
        .order_by(segment)
    )  # fmt: skip
    return SegmentsRead(
        as_of=as_of,
        by=by,
        currency=scope.currency,
        segments=[segment_view(row[0], scope.currency, row._asdict()) for row in rows],
    )


def segment_view(segment: str, currency: str, sums: Mapping[str, Any]) -> Segment:
    counts = {name: int(sums[name]) for name in _MEASURES}
    return Segment(
        segment=segment,
        loans=counts["loans"],
        principal_outstanding=format_minor(counts["principal_minor"], currency),
        fpd_10=CohortRate(rate=format_rate(counts["fpd_10_loans"], counts["fpd_10_cohort"]),
                          loans=counts["fpd_10_loans"], cohort=counts["fpd_10_cohort"]),
        fpd_30=CohortRate(rate=format_rate(counts["fpd_30_loans"], counts["fpd_30_cohort"]),
                          loans=counts["fpd_30_loans"], cohort=counts["fpd_30_cohort"]),
        current_to_30=RollFromCurrent(
            rate=format_rate(counts["current_to_30_loans"], counts["current_base"]),
            loans=counts["current_to_30_loans"], base=counts["current_base"],
        ),
        dpd_30_plus_rate=format_rate(counts["dpd_30_plus_loans"], counts["loans"]),
        dpd_90_plus_rate=format_rate(counts["dpd_90_plus_loans"], counts["loans"]),
    )  # fmt: skip


async def list_alerts(
    session: AsyncSession,
    principal: Principal,
    *,
    page: PageParams,
    since: date | None,
    merchant_id: str | None = None,
    product_code: str | None = None,
    currency: str | None = None,
) -> list[SegmentAlert]:
    """An alert is about one segment: a merchant key sees its merchant's; ``merchant_id`` and
    ``product_code`` pick a merchant's or a product's (both: none is about both)."""
    scope = scope_for(
        principal, merchant_id=merchant_id, product_code=product_code, currency=currency
    )
    query = select(SegmentAlert).order_by(SegmentAlert.id).limit(page.limit + 1)
    if currency is not None:
        query = query.where(SegmentAlert.currency == scope.currency)
    for dimension, segment in (("merchant", scope.merchant_id), ("product", scope.product_code)):
        if segment is not None:
            query = query.where(
                SegmentAlert.dimension == dimension, SegmentAlert.segment == segment
            )
    if page.after_id:
        query = query.where(SegmentAlert.id > page.after_id)
    if since is not None:
        query = query.where(SegmentAlert.as_of >= since)
    return list(await session.scalars(query))
