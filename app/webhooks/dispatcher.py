"""The outbox dispatcher: claims due deliveries, sends them signed, records every attempt.

Claims take ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), so any number of dispatchers share the
work, and move ``next_attempt_at`` a lease ahead: a dispatcher killed mid-batch leaves its
deliveries to be claimed again when the lease runs out — at-least-once, never lost. Retry times
live in the database, never in the broker.
"""

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, cast

import httpx
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.db import session_scope, utc_now
from app.events.models import Event
from app.webhooks import retry, signing, targets
from app.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger("loanwatch.webhooks")

# A claimed delivery is someone's for this long; then it is due again.
LEASE = timedelta(seconds=60)
# DESIGN: one client with a large pool tops out near 400 deliveries/s because httpx re-scans
# its pool per request; several clients with small pools go past 1,000/s.
CLIENTS, CONNECTIONS_PER_CLIENT = 8, 6
EXCERPT = 500


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    attempts: int
    event: Event
    endpoint: WebhookEndpoint


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    excerpt: str | None
    error: str | None
    retry_after: timedelta | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class ClientPool:
    """HTTP clients of this process's event loop (made lazily, after a worker forks)."""

    def __init__(self) -> None:
        self._clients: list[httpx.AsyncClient] = []
        self._next = itertools.count()

    def client(self) -> httpx.AsyncClient:
        if not self._clients:
            timeout = httpx.Timeout(get_settings().webhook_timeout_seconds, connect=3.0)
            limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT)
            self._clients = [
                httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)
                for _ in range(CLIENTS)
            ]
        return self._clients[next(self._next) % len(self._clients)]

    async def close(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))
        self._clients = []


clients = ClientPool()


def payload(event: Event) -> bytes:
    """``{type, timestamp, data}``; ``data.sequence`` lets receivers drop stale updates."""
    body = {
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": {**event.data, "sequence": event.position},
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def dispatch_due(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Send one batch of due deliveries; the number sent (0: nothing was due)."""
    now = now or utc_now()
    claimed = await _claim(now, limit or get_settings().webhook_batch_size)
    if not claimed:
        return 0
    outcomes = await asyncio.gather(*(_send(c, now) for c in claimed))
    await _record(outcomes, now)
    return len(claimed)


async def drain(*, now: datetime | None = None, budget_seconds: float = 20.0) -> int:
    """Send batches until nothing is due or the time budget is spent."""
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < budget_seconds:
        batch = await dispatch_due(now=now)
        if not batch:
            break
        sent += batch
    return sent


async def _claim(now: datetime, limit: int) -> list[Claimed]:
    async with session_scope() as session:
        due = (
            select(WebhookDelivery.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                WebhookEndpoint.enabled,
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(of=WebhookDelivery, skip_locked=True)
        )
        rows = (
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(due.scalar_subquery()))
                .values(next_attempt_at=now + LEASE)
                .returning(
                    WebhookDelivery.id,
                    WebhookDelivery.attempts,
                    WebhookDelivery.event_position,
                    WebhookDelivery.endpoint_id,
                )
            )
        ).all()
        if not rows:
            return []
        events = {
            e.position: e
            for e in await session.scalars(
                select(Event).where(Event.position.in_({r.event_position for r in rows}))
            )
        }
        endpoints = {
            e.id: e
            for e in await session.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.id.in_({r.endpoint_id for r in rows}))
            )
        }
    return [
        Claimed(r.id, r.attempts, events[r.event_position], endpoints[r.endpoint_id]) for r in rows
    ]


def _secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    in_force = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires and expires > now:
        in_force.append(endpoint.previous_secret)
    return in_force


async def _send(claimed: Claimed, now: datetime) -> Outcome:
    started = time.perf_counter()
    attempted_at = utc_now()

    def outcome(status: int | None, excerpt: str | None, error: str | None,
                retry_after: timedelta | None = None) -> Outcome:  # fmt: skip
        latency = int((time.perf_counter() - started) * 1000)
        return Outcome(claimed, attempted_at, status, latency, excerpt, error, retry_after)

    endpoint, event = claimed.endpoint, claimed.event
    try:
        await targets.check(
            endpoint.url,
            allow_private=get_settings().webhook_allow_private_targets,
            must_resolve=True,
        )
    except targets.TargetNotAllowed as exc:
        return outcome(None, None, f"target not allowed: {exc}")
    body = payload(event)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "Loanwatch-Webhooks/1",
        "webhook-id": event.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(
            _secrets(endpoint, now), event.id, timestamp, body
        ),
    }
    try:
        response = await clients.client().post(endpoint.url, content=body, headers=headers)
    except httpx.TimeoutException:
        return outcome(None, None, "timed out")
    except httpx.HTTPError as exc:
        return outcome(None, None, f"{type(exc).__name__}: {exc}"[:500])
    return outcome(
        response.status_code,
        response.text[:EXCERPT],
        None,
        _retry_after(response) if response.status_code in (429, 503) else None,
    )


def _retry_after(response: httpx.Response) -> timedelta | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        return parsedate_to_datetime(value) - utc_now()
    except (TypeError, ValueError):
        return None


async def _record(outcomes: Sequence[Outcome], now: datetime) -> None:
    settings = get_settings()
    delivered: list[dict[str, Any]] = []
    retried: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    gone: set[str] = set()
    for o in outcomes:
        attempts = o.claimed.attempts + 1
        row = {"d_id": o.claimed.delivery_id, "attempts": attempts, "at": o.attempted_at}
        if o.ok:
            delivered.append(row)
            continue
        if o.status_code == 410:
            gone.add(o.claimed.endpoint.id)
            failed.append(row)
            continue
        delay = retry.next_delay(attempts, o.retry_after)
        if delay is None:
            failed.append(row)
        else:
            retried.append({**row, "next": now + delay})
    async with session_scope() as session:
        session.add_all(
            WebhookAttempt(
                delivery_id=o.claimed.delivery_id, attempted_at=o.attempted_at,
                status_code=o.status_code, latency_ms=o.latency_ms,
                response_excerpt=o.excerpt, error=o.error,
            )
            for o in outcomes
        )  # fmt: skip
        table = cast(Table, WebhookDelivery.__table__)
        for rows, values in (
            (delivered, {"status": DeliveryStatus.DELIVERED, "delivered_at": bindparam("at")}),
            (retried, {"next_attempt_at": bindparam("next")}),
            (failed, {"status": DeliveryStatus.FAILED}),
        ):
            if rows:
                await session.execute(
                    update(table)
                    .where(table.c.id == bindparam("d_id"))
                    .values(
                        attempts=bindparam("attempts"), last_attempt_at=bindparam("at"), **values
                    ),
                    rows,
                )
        await _track_endpoint_health(
            session, outcomes, gone, now, settings.webhook_disable_after_days
        )
    _count(outcomes)


async def _track_endpoint_health(
    session: AsyncSession,
    outcomes: Sequence[Outcome],
    gone: set[str],
    now: datetime,
    disable_after_days: float,
) -> None:
    """Any success clears an endpoint's failure run; a run longer than the window, or a 410
    Gone, disables it with a reason an admin can read."""
    succeeded = {o.claimed.endpoint.id for o in outcomes if o.ok}
    last_error = {o.claimed.endpoint.id: o for o in outcomes if not o.ok}
    for endpoint_id in succeeded:
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
            .values(failing_since=None)
        )
    for endpoint_id, o in last_error.items():
        if endpoint_id in succeeded:
            continue
        endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
        if endpoint is None or not endpoint.enabled:
            continue
        endpoint.failing_since = endpoint.failing_since or now
        reason = None
        if endpoint_id in gone:
            reason = "the receiver answered 410 Gone"
        elif endpoint.failing_since <= now - timedelta(days=disable_after_days):
            error = o.error or f"HTTP {o.status_code}"
            reason = (
                f"every delivery failed since {endpoint.failing_since.isoformat()} (last: {error})"
            )
        if reason:
            endpoint.enabled, endpoint.disabled_reason = False, reason
            log.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)


def _count(outcomes: Sequence[Outcome]) -> None:
    from app.ops import metrics

    for o in outcomes:
        metrics.WEBHOOK_ATTEMPTS.labels(outcome="delivered" if o.ok else "failed").inc()
