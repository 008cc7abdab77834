"""Webhook endpoints, their subscriptions, and the outbox fan-out: every event gets one
delivery row per subscribed endpoint, in the transaction that wrote the event."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Executable,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.pagination import PageParams, after_integer
from app.api_keys.models import Role
from app.config import get_settings
from app.db import UTCDateTime, execute_counting, insert_for, is_postgres, utc_now
from app.errors import InvalidRequest
from app.events.models import Event
from app.events.types import TEST_EVENT, matching, valid_pattern
from app.ids import new_id
from app.webhooks import signing, targets
from app.webhooks.errors import EventNotFound, WebhookEndpointNotFound, WebhookUrlNotAllowed
from app.webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookSubscriptionPeriod,
)


@dataclass(frozen=True)
class EndpointView:
    endpoint: WebhookEndpoint
    event_types: list[str]


async def _checked_url(url: str) -> str:
    """The URL as it will be stored, its scheme in lower case ("HTTPS://h" is "https://h")."""
    try:
        await targets.check(
            url, allow_private=get_settings().webhook_allow_private_targets, must_resolve=False
        )
        targets.refuse_at_registration(url)
    except targets.TargetNotAllowed as exc:
        raise WebhookUrlNotAllowed(
            f"url {exc}", errors=[{"field": "url", "message": str(exc)}]
        ) from None
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}://{rest}"


def _patterns(event_types: Sequence[str]) -> list[str]:
    bad = [p for p in event_types if not valid_pattern(p)]
    if bad:
        raise InvalidRequest.field(
            "event_types", f"unknown event type or pattern: {', '.join(bad)}"
        )
    # It goes to the endpoint tested alone, whatever it subscribes to: an endpoint subscribed
    # to it alone was subscribed to nothing, and accepted (a tester's).
    test_only = [p for p in event_types if matching([p]) == [TEST_EVENT]]
    if test_only:
        raise InvalidRequest.field(
            "event_types", f"{', '.join(test_only)}: {TEST_EVENT} is sent to the endpoint "
            "tested (POST /v1/webhook-endpoints/{id}/test) whatever it subscribes to; it is "
            "not a type to subscribe to",
        )  # fmt: skip
    return sorted(set(event_types))


async def create_endpoint(
    session: AsyncSession,
    principal: Principal,
    *,
    url: str,
    event_types: Sequence[str],
    description: str | None,
    enabled: bool,
) -> EndpointView:
    principal.require(Role.ADMIN)
    patterns = _patterns(event_types)
    url = await _checked_url(url)
    # Its time is taken once this transaction holds its connection: events are sent to the
    # endpoints their own transaction sees, and on SQLite's one connection an event written
    # while this request waited for it was dated after the endpoint and never sent to it,
    # though `recover` then found it owed (a tester's, up to a second's events).
    await session.connection()
    now = utc_now()
    endpoint = WebhookEndpoint(
        id=new_id("we"), url=url, description=description, enabled=enabled,
        secret=signing.generate_secret(), created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(endpoint)
    await session.flush()
    _subscribe(session, endpoint.id, patterns, now)
    await session.flush()
    return EndpointView(endpoint, patterns)


def _subscribe(session: AsyncSession, endpoint_id: str, patterns: list[str], now: datetime) -> None:
    session.add_all([
        WebhookSubscriptionPeriod(endpoint_id=endpoint_id, pattern=p, subscribed_at=now)
        for p in patterns
    ])  # fmt: skip


async def _load(session: AsyncSession, endpoint_id: str, *, lock: bool = False) -> EndpointView:
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if lock:
        # NO KEY UPDATE: requests fanning events out to the endpoint (a key-share lock, the
        # delivery's foreign key) go on; a delete upgrades it and waits for them.
        query = query.with_for_update(key_share=True)
    endpoint = await session.scalar(query)
    if endpoint is None:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
    return (await _with_patterns(session, [endpoint]))[0]


async def _with_patterns(
    session: AsyncSession, endpoints: list[WebhookEndpoint]
) -> list[EndpointView]:
    """The endpoints with the patterns they subscribe to now: their open periods."""
    period = WebhookSubscriptionPeriod
    rows = await session.execute(
        select(period.endpoint_id, period.pattern).where(
            period.endpoint_id.in_([e.id for e in endpoints]), period.unsubscribed_at.is_(None)
        )
    )
    patterns: dict[str, list[str]] = {}
    for endpoint_id, pattern in rows:
        patterns.setdefault(endpoint_id, []).append(pattern)
    return [EndpointView(e, sorted(patterns.get(e.id, []))) for e in endpoints]


async def get_endpoint(
    session: AsyncSession, principal: Principal, *, endpoint_id: str
) -> EndpointView:
    principal.require(Role.DASHBOARD)
    return await _load(session, endpoint_id)


async def list_endpoints(
    session: AsyncSession, principal: Principal, *, page: PageParams
) -> list[EndpointView]:
    principal.require(Role.DASHBOARD)
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.id).limit(page.limit + 1)
    if page.after_id:
        query = query.where(WebhookEndpoint.id > page.after_id)
    return await _with_patterns(session, list(await session.scalars(query)))


async def update_endpoint(
    session: AsyncSession,
    principal: Principal,
    *,
    endpoint_id: str,
    changes: dict[str, Any],
    precondition: Callable[[EndpointView], None] | None = None,
) -> EndpointView:
    """``precondition``: checked on the endpoint as it stands, locked, before the change."""
    principal.require(Role.ADMIN)
    view = await _load(session, endpoint_id, lock=True)
    if precondition is not None:
        precondition(view)
    endpoint = view.endpoint
    before = (endpoint.url, endpoint.description, endpoint.enabled)
    if "url" in changes:
        endpoint.url = await _checked_url(changes["url"])
    if "description" in changes:
        endpoint.description = changes["description"]
    if "enabled" in changes:
        resumed = changes["enabled"] and not endpoint.enabled
        endpoint.enabled = changes["enabled"]
        if resumed:
            # Re-enabled by a person: the failure window starts afresh, and every delivery
            # that waited is due now, not at the retry time its last failure set (hours).
            endpoint.disabled_reason, endpoint.failing_since = None, None
            await _resume_deliveries(session, endpoint.id)
    patterns = view.event_types
    now = utc_now()
    if "event_types" in changes:
        patterns = _patterns(changes["event_types"])
        if dropped := set(view.event_types) - set(patterns):
            await session.execute(
                update(WebhookSubscriptionPeriod)
                .where(
                    WebhookSubscriptionPeriod.endpoint_id == endpoint.id,
                    WebhookSubscriptionPeriod.pattern.in_(dropped),
                    WebhookSubscriptionPeriod.unsubscribed_at.is_(None),
                )
                .values(unsubscribed_at=now)
            )
        _subscribe(session, endpoint.id, sorted(set(patterns) - set(view.event_types)), now)
    # A PATCH that changes nothing leaves the endpoint as it was, its ETag too (a tester's).
    if (endpoint.url, endpoint.description, endpoint.enabled) != before or set(patterns) != set(
        view.event_types
    ):
        endpoint.updated_at = now
    await session.flush()
    return EndpointView(endpoint, patterns)


# A resend by a person is a new round of the retry schedule, not one more attempt of the spent
# one: a dozen redeliveries to a receiver still down used up its four days in seconds, and a
# recovery gave a failed delivery a single attempt (a tester's). `attempt_log` keeps them all.
_NEW_ROUND = {"status": DeliveryStatus.PENDING, "attempts": 0}


def not_leased(now: datetime) -> Any:
    """A delivery no dispatcher holds: none claimed it, or its lease ran out."""
    return or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until <= now)


async def _resume_deliveries(session: AsyncSession, endpoint_id: str) -> None:
    """Every delivery that waited is due now, in a new round of retries. All of them, those
    already overdue too: these kept their earlier due time and went first, a loan's later
    events before its first (a tester's, 137 of 409 out of sequence); due together, they go in
    event order."""
    now = utc_now()
    resumed = await execute_counting(
        session,
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            # One being sent is left to its attempt: made due, it was claimed and sent again
            # beside it (a tester's, toggling enabled while a receiver took 2 s to answer).
            not_leased(now),
        )
        .values(**_NEW_ROUND, next_attempt_at=now),
    )
    if resumed:
        session.info["outbox_written"] = True  # wakes the dispatcher after the commit


async def delete_endpoint(session: AsyncSession, principal: Principal, *, endpoint_id: str) -> None:
    principal.require(Role.ADMIN)
    view = await _load(session, endpoint_id, lock=True)
    await session.delete(view.endpoint)


async def rotate_secret(
    session: AsyncSession, principal: Principal, *, endpoint_id: str, retire_previous: bool
) -> EndpointView:
    """A new secret; the old one keeps signing (beside the new) for the overlap period, so
    receivers can switch without losing a delivery, unless it is retired at once."""
    principal.require(Role.ADMIN)
    view = await _load(session, endpoint_id, lock=True)
    endpoint = view.endpoint
    now = utc_now()
    signing.rotate(endpoint, now, None if retire_previous else signing.overlap())
    endpoint.updated_at = now
    return view


def _matches(event_type: Any, pattern: Any) -> Any:
    """SQL: does the event type match the pattern (exact, ``prefix.*`` or ``*``)? In LIKE the
    underscores of type names are escaped, so ``loan.late_fee_*`` cannot over-match."""
    like = func.replace(func.replace(pattern, "_", "\\_"), "*", "%")
    return or_(
        pattern == "*",
        pattern == event_type,
        and_(pattern.like("%.*"), event_type.like(like, escape="\\")),
    )


async def fan_out(
    session: AsyncSession,
    low_position: int,
    high_position: int,
    *,
    only_endpoint: str | None = None,
    as_subscribed_when_written: bool = False,
) -> None:
    """A pending delivery for each event in the position range and each enabled endpoint
    subscribed to its type (now, or when the event was written). Idempotent: an existing
    delivery is left as it is."""
    key = (is_postgres(session), only_endpoint is not None, as_subscribed_when_written)
    statement = _fan_out_statements.get(key)
    if statement is None:
        statement = _fan_out_statements[key] = _fan_out_statement(session, *key[1:])
    params: dict[str, Any] = {"low": low_position, "high": high_position, "now": utc_now()}
    if only_endpoint is not None:
        params["endpoint_id"] = only_endpoint
    result = await session.execute(statement, params)
    written = cast(CursorResult[Any], result).rowcount
    # Wake the dispatcher only for new deliveries: a wake-up is a Celery message sent from a
    # thread, about a tenth of an origination's CPU when no endpoint listens (py-spy).
    if written:
        session.info["outbox_written"] = True


# Every event is fanned out in its writer's transaction: the statement is built once per
# dialect and shape (building it, with its LIKE patterns, was most of its CPU per event).
_fan_out_statements: dict[tuple[bool, bool, bool], Executable] = {}


def _addressed(
    event_type: Any, tested_endpoint_id: Any, endpoint_id: Any, *, written_at: Any = None
) -> Any:
    """SQL: is the event one ``fan_out`` sends the endpoint? Of a type it subscribes to (with
    ``written_at``: subscribed to when the event was written); a test event is one endpoint's,
    whatever it subscribes to (the test asks whether it is reachable and checks signatures),
    and whatever a recovery's range or a redelivery catches it in."""
    p = WebhookSubscriptionPeriod.__table__.c
    held = (
        p.unsubscribed_at.is_(None)
        if written_at is None
        else and_(
            p.subscribed_at <= written_at,
            or_(p.unsubscribed_at.is_(None), p.unsubscribed_at > written_at),
        )
    )
    subscribed = exists().where(p.endpoint_id == endpoint_id, _matches(event_type, p.pattern), held)
    test = event_type == TEST_EVENT
    return or_(and_(~test, subscribed), and_(test, tested_endpoint_id == endpoint_id))


def _fan_out_statement(
    session: AsyncSession, one_endpoint: bool, as_subscribed_when_written: bool
) -> Executable:
    e, w = Event.__table__.c, WebhookEndpoint.__table__.c
    now = bindparam("now", type_=UTCDateTime())
    pairs = (
        select(
            e.position,
            w.id,
            literal(DeliveryStatus.PENDING.value),
            literal(0),
            now,
            now,
        )
        .select_from(Event.__table__.join(WebhookEndpoint.__table__, true()))
        .where(
            e.position.between(bindparam("low"), bindparam("high")),
            w.enabled,
            _addressed(
                e.type,
                e.data["endpoint_id"].as_string(),
                w.id,
                written_at=e.created_at if as_subscribed_when_written else None,
            ),
        )
    )
    if one_endpoint:
        pairs = pairs.where(w.id == bindparam("endpoint_id"))
    return (
        insert_for(session, WebhookDelivery.__table__)
        .from_select(
            [
                "event_position",
                "endpoint_id",
                "status",
                "attempts",
                "next_attempt_at",
                "created_at",
            ],
            pairs,
        )
        .on_conflict_do_nothing(index_elements=["event_position", "endpoint_id"])
    )


async def send_test_event(
    session: AsyncSession, principal: Principal, *, endpoint_id: str
) -> Event:
    """A ``webhook.test`` event, delivered to this endpoint only."""
    from app.events import service as events

    principal.require(Role.ADMIN)
    view = await _load(session, endpoint_id)
    if not view.endpoint.enabled:
        # Nothing is sent to a disabled endpoint: a test accepted now would never arrive.
        raise InvalidRequest.field("enabled", "enable the endpoint before testing it")
    event_id = await events.emit(
        session,
        TEST_EVENT,
        {"endpoint_id": view.endpoint.id, "message": "Loanwatch webhook test"},
        fan_out=False,
    )
    event = await session.scalar(select(Event).where(Event.id == event_id))
    assert event is not None
    await fan_out(session, event.position, event.position, only_endpoint=view.endpoint.id)
    return event


async def redeliver(
    session: AsyncSession, principal: Principal, *, event_id: str, endpoint_id: str | None
) -> int:
    """Send an event again (same webhook-id) to its enabled subscribed endpoints, or to one,
    which must be enabled and subscribed to it: anything else would be accepted and never
    sent."""
    principal.require(Role.ADMIN)
    event = await session.scalar(select(Event).where(Event.id == event_id))
    if event is None:
        raise EventNotFound(f"event {event_id} does not exist")
    if endpoint_id is not None:
        view = await _load(session, endpoint_id)
        if not view.endpoint.enabled:
            # As for a test: a disabled endpoint is sent nothing, so the delivery would wait
            # until it is enabled again (when `recover` sends what it missed).
            raise InvalidRequest.field("enabled", "enable the endpoint before redelivering to it")
        _check_addressed(event, view)
    await fan_out(session, event.position, event.position, only_endpoint=endpoint_id)
    # One being sent at this moment is that redelivery: made due too, its attempt's record
    # set it delivered again and the count said 1 for a send never made (a re-verifier's).
    query = update(WebhookDelivery).where(
        WebhookDelivery.event_position == event.position, not_leased(utc_now())
    )
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    else:
        # Not the delivery of an endpoint disabled since, nor of one no longer subscribed to
        # the event's type (it was sent it again: a tester's): neither is sent it now.
        addressed = _addressed(
            literal(event.type), literal(event.data.get("endpoint_id")), WebhookEndpoint.id
        )
        query = query.where(
            WebhookDelivery.endpoint_id.in_(
                select(WebhookEndpoint.id).where(WebhookEndpoint.enabled, addressed)
            )
        )
    result = await session.execute(query.values(**_NEW_ROUND, next_attempt_at=utc_now()))
    session.info["outbox_written"] = True
    return int(result.rowcount)  # type: ignore[attr-defined]


def _check_addressed(event: Event, view: EndpointView) -> None:
    """The event is one ``fan_out`` sends the endpoint: of a type it subscribes to, or the
    test sent to it."""
    endpoint_id = view.endpoint.id
    if event.type == TEST_EVENT:
        if event.data.get("endpoint_id") != endpoint_id:
            raise InvalidRequest.field(
                "endpoint_id", f"the test event {event.id} was sent to another endpoint"
            )
    elif event.type not in matching(view.event_types):
        raise InvalidRequest.field(
            "endpoint_id",
            f"webhook endpoint {endpoint_id} does not subscribe to {event.type} events",
        )


async def recover(
    session: AsyncSession, principal: Principal, *, endpoint_id: str, since: datetime
) -> int:
    """Re-send everything the endpoint should have had since ``since``: failed deliveries, and
    events it never got (written while it was disabled). Not events from before it existed:
    it never subscribed to them (the feed, ``GET /v1/events``, has the whole history)."""
    principal.require(Role.ADMIN)
    view = await _load(session, endpoint_id)
    if not view.endpoint.enabled:
        raise InvalidRequest.field("enabled", "enable the endpoint before recovering")
    since = max(since, view.endpoint.created_at)
    first = await session.scalar(select(Event.position).where(Event.created_at >= since)
                                 .order_by(Event.position).limit(1))  # fmt: skip
    last = await session.scalar(select(Event.position).order_by(Event.position.desc()).limit(1))
    if first is None or last is None:
        return 0
    # As subscribed when each event was written: types subscribed since were not addressed
    # to it, types dropped since were.
    await fan_out(session, first, last, only_endpoint=endpoint_id, as_subscribed_when_written=True)
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.event_position >= first,
            WebhookDelivery.status.in_((DeliveryStatus.FAILED, DeliveryStatus.PENDING)),
            not_leased(utc_now()),
        )
        .values(**_NEW_ROUND, next_attempt_at=utc_now())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DeliveryView:
    delivery: WebhookDelivery
    event: Event
    attempts: list[WebhookAttempt]


async def list_deliveries(
    session: AsyncSession, principal: Principal, *, endpoint_id: str, page: PageParams
) -> list[DeliveryView]:
    principal.require(Role.DASHBOARD)
    await _load(session, endpoint_id)
    query = (
        select(WebhookDelivery, Event)
        .join(Event, Event.position == WebhookDelivery.event_position)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookDelivery.id)
        .limit(page.limit + 1)
    )
    if (last := after_integer(page)) is not None:
        query = query.where(WebhookDelivery.id > last)
    rows = (await session.execute(query)).all()
    attempts: dict[int, list[WebhookAttempt]] = {}
    for attempt in await session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_([d.id for d, _ in rows]))
        .order_by(WebhookAttempt.id)
    ):
        attempts.setdefault(attempt.delivery_id, []).append(attempt)
    return [DeliveryView(d, e, attempts.get(d.id, [])) for d, e in rows]
