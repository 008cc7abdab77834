"""Prometheus metrics (text format at /metrics), so an existing Grafana charts Loanwatch
without custom code. Counters are per process; backlog gauges are read from the database at
scrape time, so every API replica reports the same numbers."""

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import database, utc_now
from app.portfolio import metrics as portfolio_metrics
from app.webhooks.models import DeliveryStatus, WebhookDelivery

HTTP_REQUESTS = Counter(
    "loanwatch_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "loanwatch_http_request_seconds", "HTTP request latency", ["method", "route"]
)
WEBHOOK_ATTEMPTS = Counter(
    "loanwatch_webhook_attempts_total", "Webhook delivery attempts", ["outcome"]
)
WEBHOOK_BACKLOG = Gauge("loanwatch_webhook_backlog", "Webhook deliveries not yet delivered")
WEBHOOK_OLDEST_PENDING = Gauge(
    "loanwatch_webhook_oldest_pending_seconds", "Age of the oldest pending webhook delivery"
)


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
            # The router writes the matched route into this same scope.
            path = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], path, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)


async def render() -> Response:
    async with database.sessions() as session:
        backlog, oldest = (
            await session.execute(
                select(func.count(), func.min(WebhookDelivery.created_at)).where(
                    WebhookDelivery.status == DeliveryStatus.PENDING
                )
            )
        ).one()
        await portfolio_metrics.refresh(session)
    WEBHOOK_BACKLOG.set(backlog)
    WEBHOOK_OLDEST_PENDING.set((utc_now() - oldest).total_seconds() if oldest else 0)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
