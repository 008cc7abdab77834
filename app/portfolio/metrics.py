"""Portfolio and close gauges for /metrics, read from the same aggregates as the portfolio
views at scrape time (a few small queries, never a scan of the loans)."""

from collections import Counter
from datetime import UTC, datetime, time

from prometheus_client import Gauge
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.close.models import CloseRun, CloseStatus
from app.money import to_decimal
from app.portfolio import positions
from app.portfolio.models import PortfolioPosition
from app.portfolio.service import CLOSED_STATUSES
from app.risk.models import RiskRun

PORTFOLIO_LOANS = Gauge("loanwatch_portfolio_loans", "Open loans by bucket", ["currency", "bucket"])
PORTFOLIO_PRINCIPAL = Gauge(
    "loanwatch_portfolio_principal_outstanding",
    "Principal outstanding of open loans by bucket, in major units",
    ["currency", "bucket"],
)
OPEN_FLAGS = Gauge("loanwatch_risk_open_flags", "Open early-warning flags by code", ["code"])
# The business date is a value, not a label: a label would start a new series every night.
CLOSE_SECONDS = Gauge("loanwatch_close_run_seconds", "Duration of the last succeeded close run")
BUSINESS_DATE = Gauge(
    "loanwatch_business_date_timestamp_seconds",
    "The business date (the last succeeded close's as_of), as Unix seconds at its UTC midnight",
)
CLOSE_STEP_SECONDS = Gauge(
    "loanwatch_close_step_seconds", "Duration of each step of the last succeeded close", ["step"]
)
RISK_RUN_SECONDS = Gauge(
    "loanwatch_risk_run_seconds", "Duration of the last succeeded on-demand risk run"
)


async def refresh(session: AsyncSession) -> None:
    currencies = list(await session.scalars(select(PortfolioPosition.currency).distinct()))
    PORTFOLIO_LOANS.clear()
    PORTFOLIO_PRINCIPAL.clear()
    OPEN_FLAGS.clear()
    flags: Counter[str] = Counter()  # over every currency
    for currency in currencies:
        scope = positions.Scope(currency=currency)
        deltas = await positions.pending_deltas(session, scope)
        flags.update(await positions.open_flags(session, scope, deltas))
        for (status, bucket), tally in (await positions.positions(session, scope, deltas)).items():
            if status in CLOSED_STATUSES:
                continue
            PORTFOLIO_LOANS.labels(currency, bucket).inc(tally.count)
            PORTFOLIO_PRINCIPAL.labels(currency, bucket).inc(
                float(to_decimal(tally.principal_minor, currency))
            )
    for code, count in flags.items():
        OPEN_FLAGS.labels(code).set(count)

    run = await session.scalar(
        select(CloseRun)
        .where(CloseRun.status == CloseStatus.SUCCEEDED)
        .order_by(CloseRun.as_of.desc())
        .limit(1)
    )
    CLOSE_STEP_SECONDS.clear()
    CLOSE_SECONDS.set(0)
    BUSINESS_DATE.set(0)
    if run is not None:
        midnight = datetime.combine(run.as_of, time(), tzinfo=UTC)
        BUSINESS_DATE.set(midnight.timestamp())
    if run is not None and run.started_at and run.finished_at:
        CLOSE_SECONDS.set((run.finished_at - run.started_at).total_seconds())
        for step, entry in run.steps.items():
            if "seconds" in entry:
                CLOSE_STEP_SECONDS.labels(step).set(entry["seconds"])
    risk_seconds = await session.scalar(
        select(RiskRun.seconds)
        .where(RiskRun.status == "succeeded")
        .order_by(RiskRun.finished_at.desc())
        .limit(1)
    )
    RISK_RUN_SECONDS.set(risk_seconds or 0)
