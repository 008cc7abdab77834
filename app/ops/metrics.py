"""Prometheus metrics (text format at /metrics), so an existing Grafana charts Loanwatch
without custom code.

Two kinds, kept apart:

* counts of what a process did (HTTP requests and their latency, webhook attempts) live in the
  process, or, with ``PROMETHEUS_MULTIPROC_DIR`` set, in files every process of the host
  writes beside the others and a scrape sums (prometheus_client's multiprocess mode).
  ``loanwatch serve --workers N`` sets it, so a scrape that reaches any of the N workers sees
  all of their requests; ``loanwatch worker --metrics-port`` serves the Celery worker's;
* gauges of the book (webhook backlog, portfolio, close) are read from the database by each
  scrape and built for it alone, so every replica reports the same numbers and two scrapes
  at once never add into one another's values."""

import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import database, is_connection_lost, utc_now
from app.portfolio import metrics as portfolio_metrics
from app.webhooks.models import DeliveryStatus, WebhookDelivery

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("loanwatch.ops")

HTTP_REQUESTS = Counter(
    "loanwatch_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "loanwatch_http_request_seconds", "HTTP request latency", ["method", "route"]
)
WEBHOOK_ATTEMPTS = Counter(
    "loanwatch_webhook_attempts_total", "Webhook delivery attempts", ["outcome"]
)


def webhook_attempts_from_zero() -> None:
    """Each outcome's series at 0 in this process before its first attempt: an alert on their
    rate read "no data" until then (a tester's). A forked worker process writes its own."""
    for outcome in ("delivered", "failed"):
        WEBHOOK_ATTEMPTS.labels(outcome=outcome).inc(0)


webhook_attempts_from_zero()


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``app.middleware("http")``)
    runs the rest of the app in a task behind memory streams: about 0.4 ms of CPU per request
    on GET /v1/loans/{id} (2.5 -> 2.1 ms, bench/http_load.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started is answered 500 outside

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            observe_request(scope["method"], _route(scope), status, time.perf_counter() - started)


def _route(scope: Scope) -> str:
    """The route's template: the router writes the one it matched into this same scope. A
    request answered before the router (an idempotent replay, a key reused, one in progress)
    is matched here, or its answers counted as "unmatched" and a per-route alert missed every
    409 of POST /v1/loans under load (a tester's)."""
    route = scope.get("route")
    if route is None:
        for candidate in getattr(scope.get("app"), "routes", ()):
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    return getattr(route, "path", "unmatched")


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    counted, timed = _series(method, route, status)
    counted.inc()
    timed.observe(seconds)


# A request's two series, found once: ``labels`` checks and joins its values on every call.
# Routes are templates and "unmatched", so the combinations are few.
@functools.lru_cache(maxsize=4096)
def _series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    return HTTP_REQUESTS.labels(method, route, str(status)), HTTP_LATENCY.labels(method, route)


def shared_folder() -> Path | None:
    folder = os.environ.get(MULTIPROCESS_DIR)
    return Path(folder) if folder else None


@contextmanager
def counts_shared_between_processes() -> Iterator[Path]:
    """For the processes started inside the block: a folder they share their counts in,
    ``$PROMETHEUS_MULTIPROC_DIR`` emptied (counts of an earlier start would be summed in) or a
    temporary one, set in the environment they inherit and removed after them. Each process
    picks its storage when it imports prometheus_client, so they must start inside."""
    folder = shared_folder()
    made = folder is None
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="loanwatch-metrics-"))
        os.environ[MULTIPROCESS_DIR] = str(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    try:
        yield folder
    finally:
        if made:
            os.environ.pop(MULTIPROCESS_DIR, None)
            shutil.rmtree(folder, ignore_errors=True)


def counts() -> Collector:
    """The counts: this process's, or every process's of the shared folder."""
    if shared_folder() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class _Snapshot:
    """Gauges read for one scrape."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


async def render(*, read_the_book: bool) -> Response:
    """The counts are this process's own: a scrape during an outage, when they matter most,
    gets them and the outage, not a 503 (the closing notes')."""
    gauges = [_database_up(0)]
    if not read_the_book:
        log.warning("/metrics without the book's gauges: the key's look-up lost the database")
    else:
        try:
            gauges = [*await _book_gauges(), _database_up(1)]
        except Exception as exc:
            if not is_connection_lost(exc):
                raise
            log.warning("/metrics without the book's gauges: the database does not answer: "
                        "%s: %s", type(exc).__name__, exc)  # fmt: skip
    body = generate_latest(counts()) + generate_latest(_Snapshot(gauges))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _database_up(up: int) -> Metric:
    return GaugeMetricFamily(
        "loanwatch_database_up", "1 if the database answered this scrape, else 0", value=up
    )


async def _book_gauges() -> list[Metric]:
    async with database.sessions() as session:
        backlog, oldest = (
            await session.execute(
                select(func.count(), func.min(WebhookDelivery.created_at)).where(
                    WebhookDelivery.status == DeliveryStatus.PENDING
                )
            )
        ).one()
        book = await portfolio_metrics.read(session)
    return [
        GaugeMetricFamily(
            "loanwatch_webhook_backlog", "Webhook deliveries not yet delivered", value=backlog
        ),
        GaugeMetricFamily(
            "loanwatch_webhook_oldest_pending_seconds",
            "Age of the oldest pending webhook delivery",
            value=(utc_now() - oldest).total_seconds() if oldest else 0,
        ),
        *book,
    ]
