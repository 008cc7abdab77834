"""The outbox: every event is inserted in the transaction of the change it reports."""

import re
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Table, and_, insert, not_, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.fields import Instant
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.db import insert_rows, is_postgres, utc_now
from app.errors import InvalidRequest
from app.events import types
from app.events.models import Event
from app.ids import new_id, new_ids
from app.loans.models import Loan
from app.webhooks import service as webhooks

# Core, built once: most writes emit an event, and an ORM-enabled INSERT built per call adds
# its construction, cache key and ORM bulk-insert steps to every one.
_events = cast(Table, Event.__table__)
_INSERT_EVENT = insert(_events).returning(_events.c.position)


async def emit(
    session: AsyncSession,
    type_: str,
    data: dict[str, Any],
    *,
    loan: Loan | None = None,
    loan_id: str | None = None,
    fan_out: bool = True,
) -> str:
    """Write an event to the outbox, and its deliveries to subscribed webhook endpoints, in the
    caller's transaction."""
    event_id = new_id("evt")
    position = await session.scalar(
        _INSERT_EVENT,
        {
            "id": event_id,
            "type": type_,
            "loan_id": loan.id if loan is not None else loan_id,
            "data": data,
            "created_at": utc_now(),
        },
    )
    assert position is not None
    if fan_out:
        await webhooks.fan_out(session, position, position)
    return event_id


async def emit_many(session: AsyncSession, events: list[dict[str, Any]]) -> None:
    """Write many events at once (the close's set-based steps): each a dict of ``type``,
    ``loan_id`` and ``data``. In the feed loan by loan (a borrower's events by borrower), each
    one's in the order given: the steps build them from rows PostgreSQL and SQLite return in
    different orders, and the two databases told a close's events in different orders (a
    tester's)."""
    if not events:
        return
    events = sorted(events, key=_feed_order)
    now = utc_now()
    rows = [
        {"id": event_id, "type": event["type"], "loan_id": event.get("loan_id"),
         "data": event["data"], "created_at": now}
        for event_id, event in zip(new_ids("evt", len(events)), events, strict=True)
    ]  # fmt: skip
    positions = await insert_rows(session, _events, rows, returning="position")
    await webhooks.fan_out(session, min(positions), max(positions))


def _feed_order(event: dict[str, Any]) -> tuple[str, str]:
    """Where ``emit_many`` puts an event among the others it writes: by loan, else borrower."""
    return event.get("loan_id") or "", event["data"].get("borrower_id") or ""


# On PostgreSQL a position is drawn when its event is inserted and seen when it commits: a
# reader resuming after position 170 never saw a 158 that committed after it (a tester's, 5 of
# 900 events under 8 writers). So the feed is in commit order: by writing transaction, and
# only transactions older than every one still running in this database, whose events can
# no longer appear behind the reader. (A transaction in another database cannot write here.)
# The snapshot is taken before the sessions are read: a transaction that ended in between is
# in the one and not the other, and whether it was this database's is unknown. Counting it
# hid a just-committed event from about 3 reads in 100 while another database was busy (a
# CI run's: the test databases of two workers). A transaction of the snapshot that has ended
# by the time its status is read is no longer running: any later snapshot, the events
# read's included, sees what it committed (pg_xact_status asks the running transactions
# before the commit log, so "committed" is never said of one a snapshot still counts as
# running). Only at READ COMMITTED does the events read take a later snapshot: a database
# whose default isolation is higher keeps every transaction of the one snapshot. What is left
# unplaced, running at the status check and not among the sessions (read before or after
# it), is rare; the horizon is read again then. Re-reading alone still left a read short
# once, in a local run of the suite beside a tester's load (bench/feed_horizon.py measures
# both: docs/benchmarks.md).
_FEED_HORIZON = text(
    """WITH snapshot AS (SELECT pg_current_snapshot() AS s),
    running AS (SELECT x FROM snapshot, pg_snapshot_xip(s) AS x
                WHERE pg_xact_status(x) = 'in progress'
                   OR current_setting('transaction_isolation') <> 'read committed'),
    sessions AS (SELECT datname = current_database() AS here, backend_xid
                 FROM pg_stat_activity WHERE backend_xid IS NOT NULL)
    SELECT least(
             (SELECT pg_snapshot_xmax(s)::text::bigint FROM snapshot),
             (SELECT min(x::text::bigint) FROM running
              WHERE xid(x) <> ALL (SELECT backend_xid FROM sessions WHERE NOT here))
           ) AS horizon,
           EXISTS (SELECT FROM running
                   WHERE xid(x) <> ALL (SELECT backend_xid FROM sessions)) AS ended_unseen"""
)
# Sessions are read once per transaction unless cleared.
_FORGET_SESSIONS = text("SELECT pg_stat_clear_snapshot()")
_HORIZON_READS = 5
_FEED_ORDER = tuple_(Event.transaction_id, Event.position)
_FEED_KEY = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})")


async def list_events(
    session: AsyncSession,
    principal: Principal,
    *,
    page: PageParams,
    type_: str | None = None,
    after: str | None = None,
) -> list[Event]:
    """``type_``: comma-separated types or patterns, as endpoints subscribe (``loan.*``)."""
    principal.require(Role.DASHBOARD)
    query = select(Event).order_by(Event.transaction_id, Event.position).limit(page.limit + 1)
    if is_postgres(session):
        query = query.where(Event.transaction_id < await _feed_horizon(session))
    if type_:
        patterns = [p.strip() for p in type_.split(",")]
        unknown = [p for p in patterns if not types.valid_pattern(p)]
        if unknown:
            raise InvalidRequest.field(
                "type", f"no event type matches {', '.join(unknown)}: give types or patterns "
                "such as loan.created, loan.* or *, separated by commas",
            )  # fmt: skip
        query = query.where(Event.type.in_(types.matching(patterns)))
    if after is not None:
        query = query.where(await _after(session, after))
    if page.after_id is not None:
        if not (key := _FEED_KEY.fullmatch(page.after_id)):
            raise InvalidRequest.field("cursor", "is not a cursor this list returned")
        query = query.where(_FEED_ORDER > tuple_(int(key[1]), int(key[2])))
    return list(await session.scalars(query))


async def _feed_horizon(session: AsyncSession) -> int:
    """The lowest transaction id whose events may still appear: the feed lists those below."""
    for _ in range(_HORIZON_READS):
        horizon, ended_unseen = (await session.execute(_FEED_HORIZON)).one()
        if not ended_unseen:
            break
        await session.execute(_FORGET_SESSIONS)
    # After the last read, what it could not place is counted as this database's: the feed
    # lags a poll rather than passing an event.
    return int(horizon)


def feed_key(event: Event) -> str:
    """The events list's cursor: the event's place in the feed."""
    return f"{event.transaction_id}.{event.position}"


_INSTANT = TypeAdapter(Instant)


async def _after(session: AsyncSession, after: str) -> Any:
    """Events after an event (by its id: a subscriber resumes from the last one it received,
    even among events written in one transaction at one instant) or after an instant."""
    if after.startswith("evt_"):
        place = (
            await session.execute(
                select(
                    Event.transaction_id, Event.position, Event.oldest_running_transaction_id
                ).where(Event.id == after)
            )
        ).first()
        if place is None:
            raise InvalidRequest.field("after", f"no event {after}")
        transaction_id, position, oldest_running = place
        # Not only what follows it in the feed: a transaction running when it was written,
        # with a lower id, may have committed after it, and a webhook brings an event before
        # the feed lists it. Those are listed again (the rest of them a repeat, delivery
        # being at least once); a resume after the event missed them for good (a tester's).
        since = transaction_id if oldest_running is None else oldest_running
        return and_(
            Event.transaction_id >= since,
            not_(and_(Event.transaction_id == transaction_id, Event.position <= position)),
        )
    try:
        instant = _INSTANT.validate_python(after)
    except ValidationError:
        raise InvalidRequest.field(
            "after",
            "must be an event id (evt_...) or an RFC 3339 instant with seconds and an offset, "
            "such as 2026-12-01T00:00:00Z",
        ) from None
    return Event.created_at > instant  # aware: Instant makes it UTC
