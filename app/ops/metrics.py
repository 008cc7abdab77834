"""Prometheus metrics (text format at /metrics), so an existing Grafana charts Loanwatch
without custom code. Counters are per process; backlog gauges are read from the database at
scrape time, so every API replica reports the same numbers."""

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from app.db import database, utc_now
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


async def observe_request(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    path = getattr(route, "path", "unmatched")
    HTTP_REQUESTS.labels(request.method, path, str(response.status_code)).inc()
    HTTP_LATENCY.labels(request.method, path).observe(time.perf_counter() - started)
    return response


async def render() -> Response:
    async with database.sessions() as session:
        backlog, oldest = (
            await session.execute(
                select(func.count(), func.min(WebhookDelivery.created_at)).where(
                    WebhookDelivery.status == DeliveryStatus.PENDING
                )
            )
        ).one()
    WEBHOOK_BACKLOG.set(backlog)
    WEBHOOK_OLDEST_PENDING.set((utc_now() - oldest).total_seconds() if oldest else 0)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
