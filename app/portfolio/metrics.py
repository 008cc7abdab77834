"""Portfolio and close gauges for /metrics, read from the same aggregates as the portfolio
views at scrape time (a few small queries, never a scan of the loans)."""

from collections import Counter
from datetime import UTC, datetime, time

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncSession

from app.close.models import CloseRun, CloseStatus
from app.delinquency import service as delinquency
from app.money import to_decimal
from app.portfolio import positions
from app.portfolio.models import PortfolioDelta, PortfolioPosition
from app.portfolio.service import CLOSED_STATUSES
from app.risk.models import RiskRun


async def read(session: AsyncSession) -> list[Metric]:
    """The portfolio's and the close's gauges as of now."""
    loans = GaugeMetricFamily(
        "loanwatch_portfolio_loans", "Open loans by bucket", labels=["currency", "bucket"]
    )
    principal = GaugeMetricFamily(
        "loanwatch_portfolio_principal_outstanding",
        "Principal outstanding of open loans by bucket, in major units",
        labels=["currency", "bucket"],
    )
    open_flags = GaugeMetricFamily(
        "loanwatch_risk_open_flags", "Open early-warning flags by code", labels=["code"]
    )
    # A currency first lent since the last close (or a book never closed) has deltas only.
    currencies = list(
        await session.scalars(
            union(select(PortfolioPosition.currency), select(PortfolioDelta.currency)).order_by(
                "currency"
            )
        )
    )
    flags: Counter[str] = Counter()  # over every currency
    for currency in currencies:
        scope = positions.Scope(currency=currency)
        deltas = await positions.pending_deltas(session, scope)
        flags.update(await positions.open_flags(session, scope, deltas))
        by_bucket: Counter[str] = Counter()
        principal_by_bucket: Counter[str] = Counter()
        for (status, bucket), tally in (await positions.positions(session, scope, deltas)).items():
            if status not in CLOSED_STATUSES:
                by_bucket[bucket] += tally.count
                principal_by_bucket[bucket] += tally.principal_minor
        for bucket, count in by_bucket.items():
            loans.add_metric([currency, bucket], count)
            principal.add_metric(
                [currency, bucket], float(to_decimal(principal_by_bucket[bucket], currency))
            )
    for code, count in flags.items():
        open_flags.add_metric([code], count)
    return [loans, principal, open_flags, *await _runs(session)]


async def _runs(session: AsyncSession) -> list[Metric]:
    # The business date is a value, not a label: a label would start a new series every night.
    business_date = GaugeMetricFamily(
        "loanwatch_business_date_timestamp_seconds",
        "The business date (the latest date whose close succeeded), as Unix seconds at its UTC "
        "midnight",
    )
    close_seconds = GaugeMetricFamily(
        "loanwatch_close_run_seconds", "Duration of the last succeeded close run"
    )
    step_seconds = GaugeMetricFamily(
        "loanwatch_close_step_seconds",
        "Duration of each step of the last succeeded close",
        labels=["step"],
    )
    run = await session.scalar(
        select(CloseRun)
        .where(CloseRun.status == CloseStatus.SUCCEEDED)
        .order_by(CloseRun.as_of.desc())
        .limit(1)
    )
    # As the API has it: a rerun of the date that failed leaves it the business date.
    closed = await delinquency.business_date(session)
    midnight = datetime.combine(closed, time(), tzinfo=UTC) if closed is not None else None
    business_date.add_metric([], midnight.timestamp() if midnight else 0)
    if run is not None and run.started_at and run.finished_at:
        close_seconds.add_metric([], (run.finished_at - run.started_at).total_seconds())
        for step, entry in run.steps.items():
            if "seconds" in entry:
                step_seconds.add_metric([step], entry["seconds"])
    else:
        close_seconds.add_metric([], 0)
    risk_seconds = await session.scalar(
        select(RiskRun.seconds)
        .where(RiskRun.status == "succeeded")
        .order_by(RiskRun.finished_at.desc())
        .limit(1)
    )
    risk_run = GaugeMetricFamily(
        "loanwatch_risk_run_seconds",
        "Duration of the last succeeded on-demand risk run",
        value=risk_seconds or 0,
    )
    return [business_date, close_seconds, step_seconds, risk_run]
