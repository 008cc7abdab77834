"""The portfolio's part of the nightly close: per chunk, snapshot each open loan's bucket and
balance; once per date, rebase the live counts, recount vintages, store roll rates and
segment metrics, and raise segment alerts."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, cast

from dateutil.relativedelta import relativedelta
from sqlalchemy import (
    Date,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.config import get_settings
from app.db import (
    add_days,
    days_between,
    dialect_insert,
    execute_counting,
    insert_for,
    is_postgres,
    month_of,
    months_between,
    utc_now,
)
from app.delinquency.rules import Bucket
from app.delinquency.service import (
    AS_OF,
    bucket_sql,
    chunk_params,
    days_past_due_sql,
    in_chunk,
    principal_paid_after_sql,
    status_by_days_sql,
    tolerance_sql,
    unpaid_each_sql,
    unpaid_now_sql,
)
from app.events import service as events
from app.ids import new_id
from app.loans.models import OPEN_STATUSES, Loan, LoanInstallment, LoanStatus
from app.portfolio import positions
from app.portfolio.models import (
    LoanSnapshot,
    LoanSnapshotDay,
    RollRate,
    RollRatePair,
    SegmentAlert,
    SegmentCell,
    SegmentMetric,
    VintageCount,
)

Counts = dict[str, int]

_loan = cast(Table, Loan.__table__)
_installment = cast(Table, LoanInstallment.__table__)
_snapshot = cast(Table, LoanSnapshot.__table__)
_vintage_count = cast(Table, VintageCount.__table__)
_roll_rate = cast(Table, RollRate.__table__)
_roll_rate_pair = cast(Table, RollRatePair.__table__)

PAST_30_BUCKETS = (Bucket.DPD_31_60.value, Bucket.DPD_61_90.value, Bucket.DPD_90_PLUS.value)
DIMENSIONS = ("merchant", "product", "vintage")
FPD_DAYS = (10, 30)


@lru_cache(maxsize=16)
def _snapshot_statements(
    has_low: bool, has_high: bool, charge_off: int, tolerance: Decimal
) -> tuple[Any, Any]:
    """Drop the range's snapshot of the date (a rerun), then take it again: each loan open on
    the date, as it stood then."""
    loan, snap = _loan.c, _snapshot.c
    drop = delete(_snapshot).where(snap.as_of == AS_OF, in_chunk(snap.loan_id, has_low, has_high))
    # Open on the date, though paid off now: by a payment received after it (a catch-up, a
    # nightly close of yesterday that meets today's payoff). Left out, such loans were missing
    # from the roll rates and the segments: a store's good loans, paid off weeks later, were out
    # of its current -> 30 base, which read 100 % (a tester's). The delinquency step judges
    # open loans alone: these have their days past due looked up here, once each (materialized:
    # PostgreSQL evaluates a subquery at every place a statement names it, and the bucket and
    # the status name the days up to eight times).
    paid_off_since = and_(loan.status == LoanStatus.PAID_OFF.value, loan.paid_off_on > AS_OF)
    # A loan booked back-dated to after the date (a catch-up) was not on the book yet.
    on_the_book = and_(in_chunk(loan.id, has_low, has_high), loan.disbursed_on <= AS_OF)
    then = (
        select(loan.id.label("loan_id"), days_past_due_sql(tolerance).label("days"))
        .where(on_the_book, paid_off_since)
        .cte("paid_off_since")
        .prefix_with("MATERIALIZED")
    )
    days = func.coalesce(then.c.days, loan.days_past_due)
    take = insert(_snapshot).from_select(
        ["as_of", "loan_id", "merchant_id", "product_code", "currency", "status", "bucket",
         "days_past_due", "principal_minor"],
        select(AS_OF, loan.id, loan.merchant_id, loan.product_code, loan.currency,
               case((paid_off_since, status_by_days_sql(days, charge_off)), else_=loan.status),
               case((paid_off_since, bucket_sql(days)), else_=loan.bucket), days,
               loan.principal_outstanding_minor + principal_paid_after_sql())
        .select_from(_loan.outerjoin(then, then.c.loan_id == loan.id))
        .where(on_the_book, or_(loan.status.in_(OPEN_STATUSES), paid_off_since)),
    )  # fmt: skip
    return drop, take


async def snapshot_loans(
    session: AsyncSession, as_of: date, low: str | None, high: str | None
) -> Counts:
    """Each loan of the range open on the date (a rerun replaces its rows)."""
    close = get_settings().close
    drop, take = _snapshot_statements(
        low is not None, high is not None, close.charge_off_after_days, close.arrears_tolerance
    )
    params = chunk_params(as_of, low, high)
    await session.execute(drop, params)
    return {"loans_snapshotted": await execute_counting(session, take, params)}


async def close_portfolio(
    session: AsyncSession, as_of: date, _low: str | None = None, _high: str | None = None
) -> Counts:
    """The whole-book work of the close for ``as_of``, in one consistent snapshot."""
    today = clock.today()
    since = min(as_of, today).replace(day=1) - relativedelta(months=1)
    # Its snapshot is whole now (the snapshot step's chunks ran before this step).
    await session.execute(
        insert_for(session, LoanSnapshotDay.__table__).values(as_of=as_of).on_conflict_do_nothing()
    )
    if is_postgres(session):
        # The date's rows are new to the planner's statistics, which took each date they did
        # not know for a row or so: the roll rates' join of two dates ran as a nested loop of
        # one date's snapshot over the other's, 65-175 s at 30,000 loans where 0.5 s once
        # analysed (a tester's, without autovacuum; with it, a day's rows are too few of the
        # table to set it off most nights). Sampled, it costs the same at any size of table.
        await session.execute(text("ANALYZE loan_snapshot"))
    await positions.rebase(session, collections_since=since)
    vintages = await _recount_vintages(session, as_of)
    pairs = await _store_day_and_month_roll_rates(session, as_of)
    metrics = await _store_segment_metrics(session, as_of)
    alerts = await _raise_segment_alerts(session, as_of, metrics)
    pruned = await _prune_snapshots(session, as_of)
    return {"vintage_rows": vintages, "roll_rate_pairs": pairs, "segment_rows": len(metrics),
            "segment_alerts": alerts, "snapshots_pruned": pruned}  # fmt: skip


# -- vintages ------------------------------------------------------------------------------


@cache
def _vintages_statement() -> Any:
    """The book as of the date closed: not a loan booked back-dated to after it (a catch-up
    still behind), nor a fall past 30 days later than it (a history brought in ahead)."""
    loan = _loan.c
    month = month_of(loan.disbursed_on)
    months_to_30 = case(
        (loan.ever_30_plus_on <= AS_OF, months_between(loan.ever_30_plus_on, loan.disbursed_on)),
        else_=-1,
    )
    return insert(_vintage_count).from_select(
        ["origination_month", "merchant_id", "product_code", "currency",
         "months_on_book_at_30_plus", "loans", "principal_minor"],
        select(month, loan.merchant_id, loan.product_code, loan.currency, months_to_30,
               func.count(), func.sum(loan.principal_minor))
        # A returned purchase never had a chance to pay: it is not part of any vintage.
        .where(loan.status != LoanStatus.CANCELLED, loan.disbursed_on <= AS_OF)
        .group_by(month, loan.merchant_id, loan.product_code, loan.currency, months_to_30),
    )  # fmt: skip


async def _recount_vintages(session: AsyncSession, as_of: date) -> int:
    await session.execute(delete(VintageCount))
    return await execute_counting(session, _vintages_statement(), {"as_of": as_of})


# -- roll rates ----------------------------------------------------------------------------


async def snapshot_dates(session: AsyncSession) -> list[date]:
    return list(
        await session.scalars(select(LoanSnapshotDay.as_of).order_by(LoanSnapshotDay.as_of))
    )


async def latest_snapshot_on_or_before(session: AsyncSession, day: date) -> date | None:
    return await session.scalar(
        select(func.max(LoanSnapshotDay.as_of)).where(LoanSnapshotDay.as_of <= day)
    )


@lru_cache(maxsize=2)
def _roll_rate_statements(postgres: bool) -> tuple[Any, Any]:
    """The movements between the closes ``from_date`` and ``to_date``, and their pair."""
    start, end = _snapshot.alias("start"), _snapshot.alias("finish")
    # Not the columns' names: those are reserved for the VALUES of an insert.
    from_date, to_date = bindparam("rolled_from", type_=Date), bindparam("rolled_to", type_=Date)
    movements = (
        dialect_insert(postgres, _roll_rate)
        .from_select(
            ["from_date", "to_date", "merchant_id", "product_code", "currency", "from_bucket",
             "to_bucket", "loans", "principal_minor"],
            select(from_date, to_date, start.c.merchant_id,
                   start.c.product_code, start.c.currency, start.c.bucket, end.c.bucket,
                   func.count(), func.sum(end.c.principal_minor))
            .select_from(start.join(end, and_(end.c.loan_id == start.c.loan_id,
                                              end.c.as_of == to_date)))
            .where(start.c.as_of == from_date)
            .group_by(start.c.merchant_id, start.c.product_code, start.c.currency,
                      start.c.bucket, end.c.bucket),
        )
        .on_conflict_do_nothing()
    )  # fmt: skip
    pair = (
        dialect_insert(postgres, _roll_rate_pair)
        .values(from_date=from_date, to_date=to_date, computed_at=bindparam("now"))
        .on_conflict_do_nothing()
    )
    return movements, pair


async def store_roll_rates(session: AsyncSession, from_date: date, to_date: date) -> None:
    """Bucket-to-bucket movements of the loans open at both closes, per merchant and product
    (stored once: closed snapshots do not change)."""
    movements, pair = _roll_rate_statements(is_postgres(session))
    params = {"rolled_from": from_date, "rolled_to": to_date, "now": utc_now()}
    await session.execute(movements, params)
    await session.execute(pair, params)


async def _store_day_and_month_roll_rates(session: AsyncSession, as_of: date) -> int:
    """Roll rates from the previous close and from a month before, ready for dashboards.
    Pairs ending on ``as_of`` are recomputed: a rerun of the close rewrote its snapshot."""
    await session.execute(delete(RollRate).where(RollRate.to_date == as_of))
    await session.execute(delete(RollRatePair).where(RollRatePair.to_date == as_of))
    starts = {
        await latest_snapshot_on_or_before(session, as_of - timedelta(days=1)),
        await latest_snapshot_on_or_before(session, as_of - relativedelta(months=1)),
    }
    for start in sorted(d for d in starts if d is not None):
        await store_roll_rates(session, start, as_of)
    return len([d for d in starts if d is not None])


async def _prune_snapshots(session: AsyncSession, as_of: date) -> int:
    """Drop daily snapshots past the retention, keeping each month's last one."""
    horizon = as_of - timedelta(days=get_settings().portfolio.snapshot_retention_days)
    dates = [d for d in await snapshot_dates(session) if d < horizon]
    month_ends: dict[tuple[int, int], date] = {}
    for day in dates:
        month_ends[(day.year, day.month)] = day
    drop = [d for d in dates if d not in month_ends.values()]
    if not drop:
        return 0
    await session.execute(delete(LoanSnapshotDay).where(LoanSnapshotDay.as_of.in_(drop)))
    return await execute_counting(session, delete(LoanSnapshot).where(LoanSnapshot.as_of.in_(drop)))


# -- segments and their alerts -------------------------------------------------------------


@dataclass
class SegmentCounts:
    loans: int = 0
    principal_minor: int = 0
    dpd_30_plus_loans: int = 0
    dpd_90_plus_loans: int = 0
    fpd: dict[int, list[int]] = field(default_factory=lambda: {n: [0, 0] for n in FPD_DAYS})
    current_base: int = 0
    current_to_30_loans: int = 0

    def add(self, other: "SegmentCounts") -> None:
        self.loans += other.loans
        self.principal_minor += other.principal_minor
        self.dpd_30_plus_loans += other.dpd_30_plus_loans
        self.dpd_90_plus_loans += other.dpd_90_plus_loans
        for days in FPD_DAYS:
            self.fpd[days][0] += other.fpd[days][0]
            self.fpd[days][1] += other.fpd[days][1]
        self.current_base += other.current_base
        self.current_to_30_loans += other.current_to_30_loans

    def columns(self) -> dict[str, int]:
        """As the columns of models.SegmentColumns."""
        return {"loans": self.loans, "principal_minor": self.principal_minor,
                "dpd_30_plus_loans": self.dpd_30_plus_loans,
                "dpd_90_plus_loans": self.dpd_90_plus_loans,
                "fpd_10_cohort": self.fpd[10][0], "fpd_10_loans": self.fpd[10][1],
                "fpd_30_cohort": self.fpd[30][0], "fpd_30_loans": self.fpd[30][1],
                "current_base": self.current_base,
                "current_to_30_loans": self.current_to_30_loans}  # fmt: skip


Cell = tuple[str, str, str, str]  # merchant, product, currency, origination month


def _segments_of(cell: Cell) -> dict[str, str]:
    merchant, product, _, month = cell
    return {"merchant": merchant, "product": product, "vintage": month}


def _dims() -> tuple[Any, ...]:
    loan = _loan.c
    return (loan.merchant_id, loan.product_code, loan.currency, month_of(loan.disbursed_on))


@cache
def _open_cells_statement() -> Any:
    """The loans open on the date, from its snapshot (as they stood then, not now)."""
    loan, snap = _loan.c, _snapshot.c
    dims = _dims()
    return (
        select(*dims, func.count(), func.sum(snap.principal_minor),
               func.sum(case((snap.bucket.in_(PAST_30_BUCKETS), 1), else_=0)),
               func.sum(case((snap.bucket == Bucket.DPD_90_PLUS.value, 1), else_=0)))
        .select_from(_snapshot.join(_loan, loan.id == snap.loan_id))
        .where(snap.as_of == AS_OF)
        .group_by(*dims)
    )  # fmt: skip


@lru_cache(maxsize=16)
def _first_payment_default_statement(days: int, tolerance: Decimal) -> Any:
    """The cohort of first installments due after ``due_after`` and by ``due_by`` (at least
    ``days`` ago), and how many of them were more than ``days`` late: more than the arrears
    tolerance still unpaid by the close of their ``days``-th day past due, as the flags judge
    an installment missed. By the day it was settled in full, 1.00 left over and paid with
    the next installment was a default, and raised a store's alert (a tester's)."""
    loan, inst = _loan.c, _installment.c
    dims = _dims()
    judged_on = add_days(inst.due_date, days)
    unpaid_then = case(
        (and_(inst.paid_on.is_not(None), inst.paid_on <= judged_on), 0),
        # Whatever was paid later, at least this much was unpaid then: no look-up.
        (unpaid_now_sql() > tolerance_sql(tolerance), unpaid_now_sql()),
        else_=unpaid_each_sql(judged_on),
    )
    defaulted = unpaid_then > tolerance_sql(tolerance)
    return (
        select(*dims, func.count(), func.sum(case((defaulted, 1), else_=0)))
        .select_from(_installment.join(_loan, loan.id == inst.loan_id))
        .where(inst.seq == 1,
               inst.due_date <= bindparam("due_by", type_=Date),
               inst.due_date > bindparam("due_after", type_=Date),
               days_between(AS_OF, inst.due_date) >= days,
               loan.status != LoanStatus.CANCELLED)
        .group_by(*dims)
    )  # fmt: skip


@cache
def _current_cells_statement() -> Any:
    """The loans current at the close ``month_ago`` and open on the date, and how many of them
    are delinquent then: the roll-rate matrix's current row, so a store's returns and early
    payoffs do not dilute it."""
    loan, start, end = _loan.c, _snapshot.alias("start"), _snapshot.alias("finish")
    dims = _dims()
    delinquent = end.c.bucket != Bucket.CURRENT.value
    return (
        select(*dims, func.count(), func.sum(case((delinquent, 1), else_=0)))
        .select_from(start.join(end, and_(end.c.loan_id == start.c.loan_id, end.c.as_of == AS_OF))
                     .join(_loan, loan.id == start.c.loan_id))
        .where(start.c.as_of == bindparam("month_ago", type_=Date),
               start.c.bucket == Bucket.CURRENT.value)
        .group_by(*dims)
    )  # fmt: skip


async def _cells(session: AsyncSession, as_of: date) -> dict[Cell, SegmentCounts]:
    """The finest grain (merchant, product, currency, origination month), rolled up later."""
    cells: dict[Cell, SegmentCounts] = defaultdict(SegmentCounts)
    for *cell, loans, principal, past_30, past_90 in await session.execute(
        _open_cells_statement(), {"as_of": as_of}
    ):
        counts = cells[cast(Cell, tuple(cell))]
        counts.loans, counts.principal_minor = loans, int(principal or 0)
        counts.dpd_30_plus_loans, counts.dpd_90_plus_loans = int(past_30), int(past_90)

    window = get_settings().portfolio.fpd_cohort_days
    tolerance = get_settings().close.arrears_tolerance
    for days in FPD_DAYS:
        rows = await session.execute(
            _first_payment_default_statement(days, tolerance),
            {"as_of": as_of, "due_by": as_of - timedelta(days=days),
             "due_after": as_of - timedelta(days=days + window)},
        )  # fmt: skip
        for *cell, cohort, defaults in rows:
            cells[cast(Cell, tuple(cell))].fpd[days] = [int(cohort), int(defaults or 0)]

    month_ago = await latest_snapshot_on_or_before(session, as_of - relativedelta(months=1))
    if month_ago is not None:
        rows = await session.execute(
            _current_cells_statement(), {"as_of": as_of, "month_ago": month_ago}
        )
        for *cell, base, rolled in rows:
            counts = cells[cast(Cell, tuple(cell))]
            counts.current_base, counts.current_to_30_loans = int(base), int(rolled or 0)
    return cells


async def _store_segment_metrics(session: AsyncSession, as_of: date) -> list[dict[str, Any]]:
    cells = await _cells(session, as_of)
    totals: dict[tuple[str, str, str], SegmentCounts] = defaultdict(SegmentCounts)
    for cell, counts in cells.items():
        for dimension, segment in _segments_of(cell).items():
            totals[(dimension, segment, cell[2])].add(counts)
    rows = [
        {"as_of": as_of, "dimension": dimension, "segment": segment, "currency": currency,
         **t.columns()}
        for (dimension, segment, currency), t in sorted(totals.items())
    ]  # fmt: skip
    await session.execute(delete(SegmentMetric).where(SegmentMetric.as_of == as_of))
    if rows:
        await session.execute(insert(SegmentMetric), rows)
    await session.execute(delete(SegmentCell))
    cell_rows = [
        {"as_of": as_of, "merchant_id": merchant, "product_code": product, "currency": currency,
         "month": month, **counts.columns()}
        for (merchant, product, currency, month), counts in sorted(cells.items())
    ]  # fmt: skip
    if cell_rows:
        await session.execute(insert(SegmentCell), cell_rows)
    return rows


# The rates a segment alert watches: (name, numerator column, denominator column).
ALERT_METRICS = (
    ("fpd_10", "fpd_10_loans", "fpd_10_cohort"),
    ("fpd_30", "fpd_30_loans", "fpd_30_cohort"),
    ("current_to_30", "current_to_30_loans", "current_base"),
)


# The earlier closes' rates of each segment, the baseline its rate today is held against.
_ALERT_HISTORY = select(
    SegmentMetric.dimension, SegmentMetric.segment, SegmentMetric.currency,
    SegmentMetric.fpd_10_loans, SegmentMetric.fpd_10_cohort, SegmentMetric.fpd_30_loans,
    SegmentMetric.fpd_30_cohort, SegmentMetric.current_to_30_loans, SegmentMetric.current_base,
).where(
    SegmentMetric.as_of >= bindparam("since"), SegmentMetric.as_of < bindparam("before")
)  # fmt: skip


def rate(numerator: int, denominator: int) -> Decimal | None:
    return None if denominator == 0 else Decimal(numerator) / Decimal(denominator)


async def _raise_segment_alerts(
    session: AsyncSession, as_of: date, metrics: list[dict[str, Any]]
) -> int:
    """``risk.segment_alert`` for each segment metric above ``alert_multiple`` times its mean
    over the trailing months' closes (``alert_min_closes`` of them at least) and at least
    ``alert_min_increase`` above it, with at least ``alert_min_loans`` in its denominator.
    Once in ``alert_quiet_days`` per segment and metric, however often the close reruns: a
    bad batch of loans alerted its merchant, product and vintage every night for a month,
    254 alerts (a tester's)."""
    settings = get_settings().portfolio
    start = as_of - relativedelta(months=settings.alert_trailing_months)
    history: dict[tuple[str, str, str, str], list[Decimal]] = defaultdict(list)
    for earlier in await session.execute(_ALERT_HISTORY, {"since": start, "before": as_of}):
        for name, numerator, denominator in ALERT_METRICS:
            value = rate(getattr(earlier, numerator), getattr(earlier, denominator))
            if value is not None:
                key = (earlier.dimension, earlier.segment, earlier.currency, name)
                history[key].append(value)
    existing = await session.execute(
        select(SegmentAlert.dimension, SegmentAlert.segment, SegmentAlert.currency,
               SegmentAlert.metric)
        .where(SegmentAlert.as_of > as_of - timedelta(days=settings.alert_quiet_days),
               SegmentAlert.as_of <= as_of)
    )  # fmt: skip
    already = {tuple(row) for row in existing}
    raised = 0
    for row in metrics:
        for name, numerator, denominator in ALERT_METRICS:
            key = (row["dimension"], row["segment"], row["currency"], name)
            value = rate(row[numerator], row[denominator])
            past = history.get(key)
            if value is None or past is None or key in already:
                continue
            if len(past) < settings.alert_min_closes:
                continue
            baseline = sum(past, Decimal(0)) / len(past)
            if row[denominator] < settings.alert_min_loans:
                continue
            if value <= baseline * settings.alert_multiple:
                continue
            if value - baseline < settings.alert_min_increase:
                continue
            alert = SegmentAlert(
                id=new_id("alert"), as_of=as_of, dimension=row["dimension"],
                segment=row["segment"], currency=row["currency"], metric=name,
                value=round(value, 6), baseline=round(baseline, 6),
                multiple=settings.alert_multiple, loans=row[denominator],
                details={"numerator": row[numerator], "denominator": row[denominator],
                         "closes_in_baseline": len(past), "baseline_since": start.isoformat()},
                created_at=utc_now(),
            )  # fmt: skip
            session.add(alert)
            await events.emit(session, "risk.segment_alert", alert_event(alert))
            raised += 1
    return raised


def alert_event(alert: SegmentAlert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "as_of": alert.as_of.isoformat(),
        "dimension": alert.dimension,
        "segment": alert.segment,
        "currency": alert.currency,
        "metric": alert.metric,
        "value": f"{Decimal(alert.value):.4f}",
        "baseline": f"{Decimal(alert.baseline):.4f}",
        # Formatted, not str(): the setting is 1.5 in memory and 1.5000 once stored, and the
        # event and GET /v1/portfolio/alerts must say the same.
        "multiple": f"{Decimal(alert.multiple):.4f}",
        # How far above its norm: "multiple" is the threshold it crossed, and read as this
        # (a tester's).
        "ratio": (
            f"{Decimal(alert.value) / Decimal(alert.baseline):.4f}"
            if Decimal(alert.baseline)
            else None
        ),
        "loans": alert.loans,
        "details": alert.details,
    }
