"""The outbox dispatcher: claims due deliveries, sends them signed, records every attempt.

Claims take ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), so any number of dispatchers share the
work, and move ``next_attempt_at`` a lease ahead: a dispatcher killed mid-batch leaves its
deliveries to be claimed again when the lease runs out — at-least-once, never lost. Retry times
live in the database, never in the broker.
"""

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, cast

import httpx
from sqlalchemy import Table, bindparam, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from tenacity import retry as retrying
from tenacity import retry_if_exception, stop_after_attempt, wait_exponential

from app.config import get_settings
from app.db import is_transient, session_scope, utc_now, utc_text
from app.events.models import Event
from app.webhooks import retry, signing, targets, transport
from app.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger("loanwatch.webhooks")

# A claimed delivery is someone's for this long; then it is due again.
LEASE = timedelta(seconds=60)
# One client whose requests spread over 24 httpcore pools of 2 connections (transport.py), and
# never more requests in flight than connections: no request waits in a pool's queue. Per
# request, a pool's bookkeeping grows with its connections: 24 x 2 cost ~1.0-1.2 ms of CPU per
# request where 8 x 6 cost ~1.3-1.5 (a bare loop on the loaded machine, 8,000 requests).
SHARDS, CONNECTIONS_PER_SHARD = 24, 2
IN_FLIGHT = SHARDS * CONNECTIONS_PER_SHARD
EXCERPT = 500
# While an attempt is pending, a drain records what ended and claims what fell due at least
# this often: a new delivery waits no longer than this for another endpoint's slow attempt.
TICK_SECONDS = 0.1
# An endpoint with an attempt pending this long is slow: once it has every sender it may have,
# its waiting deliveries go back rather than hold up the drain's claims.
SLOW_SECONDS = 1.0
# An endpoint whose attempt took that long, or failed without an answer, stays slow this long.
SLOW_MEMORY_SECONDS = 30.0


@dataclass(frozen=True)
class Target:
    """An endpoint as one batch sends to it: the signing keys in force at the batch's ``now``
    (two during a rotation), decoded once."""

    id: str
    url: str
    keys: list[bytes]
    # Parsed once per batch, not per request (httpx's URL parsing was ~3 % of a drain's CPU);
    # None for a URL httpx refuses, which _send records as the attempt's error.
    address: httpx.URL | None


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    attempts: int
    event_id: str
    body: bytes
    endpoint: Target
    # The event's sequence and loan: one loan's events reach an endpoint in sequence order.
    position: int
    loan_id: str | None
    # When it fell due: what a hand-back restores, so it is claimed again in its turn.
    due_at: datetime


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


class SharedClient:
    """The one HTTP client of this process's event loop (made lazily, after a worker forks)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client's connections belong to the loop that opened them.
            self._client, self._loop = (
                transport.make_client(
                    timeout=get_settings().webhook_timeout_seconds,
                    shards=SHARDS,
                    connections_per_shard=CONNECTIONS_PER_SHARD,
                ),
                loop,
            )
        return self._client

    async def close(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()


clients = SharedClient()


def payload(event_type: str, created_at: datetime, data: dict[str, Any], position: int) -> bytes:
    """``{type, timestamp, data}``; ``data.sequence`` orders a loan's events for receivers."""
    body = {
        "type": event_type,
        "timestamp": utc_text(created_at),
        "data": {**data, "sequence": position},
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def dispatch_due(*, now: datetime | None = None, limit: int | None = None) -> int:
    """Send one batch of due deliveries; the number sent (0: nothing was due)."""
    now = now or utc_now()
    lanes = _Lanes()
    try:
        await lanes.claim(now, limit or get_settings().webhook_batch_size)
        await lanes.finish()
    finally:
        await lanes.stop()
    return await lanes.record(now)


async def drain(
    *, now: datetime | None = None, budget_seconds: float = 20.0, stop: asyncio.Event | None = None
) -> int:
    """Send what is due until nothing is or the time budget is spent, then end the attempts
    in flight and hand back the rest.

    A pipeline rather than batch after batch: while attempts are pending, the drain records
    those that ended and claims what fell due (when a sender runs out of lanes, else every
    TICK_SECONDS), so an endpoint that hangs until its timeout holds up only its own lane,
    never another endpoint's deliveries. Once the budget is spent, the deliveries claimed and
    not yet started are due again at once, for the next drain to claim with whatever fell
    due meanwhile: a slow endpoint's lane, sent to its end, kept this drain (and on the
    embedded default every other endpoint's new events) for as long as the lane took (a
    tester's). Once ``stop`` is set (the process is stopping) every delivery not started is
    handed back at once and the drain ends with the attempts in flight, recorded. Only this
    loop touches the database, so statements stay one at a time, as
    SQLite's single connection needs. A failure stops every lane and leaves what it claimed
    to the lease.
    """
    limit = get_settings().webhook_batch_size
    lanes, sent = _Lanes(), 0
    started = time.monotonic()  # after the client is made: the first one takes a while
    try:
        while True:
            sent += await lanes.record(now or utc_now())
            elapsed = time.monotonic() - started
            over = lanes.over = elapsed >= budget_seconds
            slow = lanes.slow_endpoints()
            # Past its budget by a timeout, the drain ends whatever is pending: an endpoint
            # that answers, slowly, could otherwise keep it going as long as its backlog.
            ending = over and (
                not lanes.waiting_on_hanging() or elapsed >= budget_seconds + lanes.timeout
            )
            if (stop is not None and stop.is_set()) or ending:
                await lanes.hand_back()
            else:
                # Past its budget the drain only waits out the slow attempts: none starts to
                # an endpoint with one pending or none answered lately, and meanwhile the
                # other endpoints' deliveries go on (the embedded default, one drain at a
                # time, held them back by a timeout every 20 s: a re-verifier's). Before, only
                # slow endpoints with every sender they may have. One that answered slowly
                # once is not left out: a healthy endpoint whose one answer took a second
                # waited out another's timeout at the end of every drain for 30 s (a
                # tester's, on Celery: ~10 s, p90).
                leave_out = lanes.hanging() if over else lanes.full()
                await lanes.hand_back_lanes(leave_out)
                # Nor are more claimed for a slow endpoint with attempts pending: claimed
                # first (they fell due first), a slow endpoint's backlog filled every batch,
                # and a healthy endpoint's new event waited behind it for a minute and more
                # (a tester's, on Celery, 4,000 deliveries behind). Slow now, or silent
                # lately: one slow answer left a healthy endpoint, busy with its own lanes,
                # out of most claims for 30 s.
                leave_out |= {e for e in lanes.hanging() if lanes.busy[e]}
                # A batch while less than one is held (but for slow endpoints, whose attempts
                # may take a timeout): the lanes never run dry while the database works, and
                # no more than two batches are leased by one drain beside the slow ones.
                if lanes.held - lanes.held_by(slow) < limit:
                    await lanes.claim(now or utc_now(), limit, excluding=leave_out)
            if not lanes.held:
                await lanes.record(now or utc_now())  # what was left unsent meanwhile
                return sent
            await lanes.wait(TICK_SECONDS)
    finally:
        await lanes.stop()


# A lane: (endpoint id, loan id, or the event id of an event of no loan).
LaneKey = tuple[str, str]


class _Lanes:
    """The deliveries one drain holds, from their claim to the record of their attempt.

    One loan's events to one endpoint form a lane and go one after another in sequence order,
    so a healthy endpoint sees a loan's history in the order it happened; a delivery claimed
    while its lane is still being sent joins the lane's end, never overtakes it. Lanes run
    side by side, at most IN_FLIGHT requests at a time, the endpoints taking turns, each
    with at most its share of them (``cap``).
    """

    def __init__(self) -> None:
        self.client = clients.client()
        self.timeout = get_settings().webhook_timeout_seconds
        self.lanes: dict[LaneKey, deque[Claimed]] = {}
        # Lanes waiting for a sender, by endpoint in turn (the next to be served first).
        self.ready: dict[str, deque[LaneKey]] = {}
        self.busy: Counter[str] = Counter()  # senders on each endpoint's lanes
        # Attempts being sent: delivery id -> (endpoint id, when it started, monotonic).
        self.sending: dict[int, tuple[str, float]] = {}
        # Endpoints an attempt found slow -> until when they count as slow (monotonic);
        # those that got no answer at all, likewise.
        self.slow_marks: dict[str, float] = {}
        self.silent_marks: dict[str, float] = {}
        self.senders: set[asyncio.Task[None]] = set()
        # Claimed and not yet recorded: delivery id -> when its lease ends (monotonic).
        self.leases: dict[int, float] = {}
        # Left unsent with some lease to spare: due again at the next record.
        self.released: list[tuple[Claimed, float]] = []
        self.refusals: dict[str, str | None] = {}
        self.sent: list[Outcome] = []  # not yet recorded
        # Past the drain's budget: no attempt starts to an endpoint that hangs.
        self.over = False

    @property
    def held(self) -> int:
        return len(self.leases)

    async def claim(self, now: datetime, limit: int, excluding: Collection[str] = ()) -> None:
        """``excluding``: endpoints whose deliveries are not claimed (slow ones with attempts
        pending: see ``drain``)."""
        lease_ends = time.monotonic() + LEASE.total_seconds()
        claimed = await _claim(now, limit, excluding)
        # The latest check of a URL is the one in force, for deliveries queued earlier too.
        self.refusals.update(await _refusals({c.endpoint.url for c in claimed}))
        for c in sorted(claimed, key=lambda c: c.position):
            held = c.delivery_id in self.leases
            self.leases[c.delivery_id] = lease_ends
            # Claimed again after its lease ran out while it waited here: the claim only
            # renewed the lease; it is sent once, from its place in its lane.
            if not held:
                self._enqueue(c)
        self._start_senders()

    def cap(self) -> int:
        """The senders one endpoint may have: an equal share, with one share kept back for an
        endpoint that has none yet. Hanging endpoints with more loans' lanes than there are
        senders took every one, and a healthy endpoint's deliveries waited behind their
        timeouts, up to their lease (60 s; a tester's, with 150 loans; then with two hanging
        endpoints each taking half)."""
        active = self.ready.keys() | {e for e, n in self.busy.items() if n}
        return max(1, IN_FLIGHT // (len(active) + 1))

    def _slow(self) -> list[str]:
        """The endpoint of each attempt pending for SLOW_SECONDS or more."""
        since = time.monotonic() - SLOW_SECONDS
        return [endpoint_id for endpoint_id, started in self.sending.values() if started < since]

    def waiting_on_hanging(self) -> bool:
        """An attempt is pending to an endpoint that hangs (``hanging``)."""
        hanging = self.hanging()
        return any(endpoint_id in hanging for endpoint_id, _ in self.sending.values())

    def slow_endpoints(self) -> set[str]:
        """Those with an attempt pending for SLOW_SECONDS, or found slow lately."""
        now = time.monotonic()
        return set(self._slow()) | {e for e, until in self.slow_marks.items() if until > now}

    def hanging(self) -> set[str]:
        """Those with an attempt pending for SLOW_SECONDS, or one that got no answer lately."""
        now = time.monotonic()
        return set(self._slow()) | {e for e, until in self.silent_marks.items() if until > now}

    def held_by(self, endpoints: set[str]) -> int:
        """The deliveries this drain holds for ``endpoints``: waiting or being sent."""
        waiting = sum(len(lane) for key, lane in self.lanes.items() if key[0] in endpoints)
        return waiting + sum(1 for e, _ in self.sending.values() if e in endpoints)

    def full(self) -> set[str]:
        """The slow endpoints with every sender they may have: what they hold is handed back
        and they are left out of claims, so that a hanging endpoint never keeps the drain
        from claiming the others' deliveries (600 loans' lanes to one held back a healthy
        endpoint's new events by up to a timeout)."""
        cap = self.cap()
        return {e for e in self._slow() if self.busy[e] >= cap}

    async def hand_back_lanes(self, endpoints: set[str]) -> None:
        """The lanes of ``endpoints`` not started: due again at once."""
        waiting: list[Claimed] = []
        for endpoint_id in endpoints & self.ready.keys():
            for key in self.ready.pop(endpoint_id):
                waiting.extend(self.lanes.pop(key))
        # One whose lease ran out while it waited may be another dispatcher's now.
        await _due_again([c for c in waiting if self.leases.pop(c.delivery_id) > time.monotonic()])

    def _start_senders(self) -> None:
        # A sender that ran out of lanes is over, though only wait() drops it.
        running = sum(not task.done() for task in self.senders)
        cap = self.cap()
        startable = sum(
            min(len(lanes), cap - self.busy[endpoint_id])
            for endpoint_id, lanes in self.ready.items()
        )
        for _ in range(min(IN_FLIGHT - running, startable)):
            self.senders.add(asyncio.create_task(self._send_lanes()))

    async def record(self, now: datetime) -> int:
        """Records the attempts that ended; how many. Makes due again what was left unsent
        while its lease still had a second to spare (after that it may be another
        dispatcher's)."""
        outcomes, self.sent = self.sent, []
        if outcomes:
            await _record(outcomes, now)
        for o in outcomes:
            del self.leases[o.claimed.delivery_id]
        released, self.released = self.released, []
        await _due_again([c for c, lease_ends in released if lease_ends - time.monotonic() > 1.0])
        return len(outcomes)

    async def wait(self, seconds: float) -> None:
        """Until a sender runs out of lanes or ``seconds`` pass; a sender's failure is raised."""
        if not self.senders:
            return
        done, self.senders = await asyncio.wait(
            self.senders, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            task.result()
        # Lanes of an endpoint that had all its senders may be sendable now.
        self._start_senders()

    async def finish(self) -> None:
        while self.senders:
            await self.wait(self.timeout)

    async def stop(self) -> None:
        """Cancels the senders left (a failure's): what they held stays leased, sent again
        once the lease runs out."""
        for task in self.senders:
            task.cancel()
        await asyncio.gather(*self.senders, return_exceptions=True)
        self.senders.clear()

    async def hand_back(self) -> None:
        """The deliveries claimed and not yet started are due again at once, in their order;
        the lanes end with the attempts in flight."""
        waiting = [c for lane in self.lanes.values() for c in lane]
        for lane in self.lanes.values():
            lane.clear()
        self.ready.clear()
        # One whose lease ran out while it waited may be another dispatcher's now.
        await _due_again([c for c in waiting if self.leases.pop(c.delivery_id) > time.monotonic()])

    def _enqueue(self, claimed: Claimed) -> None:
        key = (claimed.endpoint.id, claimed.loan_id or claimed.event_id)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = deque()
            self.ready.setdefault(key[0], deque()).append(key)
        lane.append(claimed)

    def _next_lane(self) -> LaneKey | None:
        """The first ready lane of the first endpoint in turn with a sender to spare; that
        endpoint's turn moves to the end."""
        cap = self.cap()
        for endpoint_id, lanes in self.ready.items():
            if self.busy[endpoint_id] < cap:
                key = lanes.popleft()
                del self.ready[endpoint_id]
                if lanes:
                    self.ready[endpoint_id] = lanes
                return key
        return None

    async def _send_lanes(self) -> None:
        while (key := self._next_lane()) is not None:
            self.busy[key[0]] += 1
            try:
                await self._send_lane(self.lanes[key])
            finally:
                self.busy[key[0]] -= 1
            # Nothing is awaited between the lane's last look and this: no claim can join a
            # lane nobody would send.
            del self.lanes[key]

    async def _send_lane(self, lane: deque[Claimed]) -> None:
        while lane:
            claimed = lane.popleft()
            # Sent this late, the attempt could outlive the lease, and another dispatcher
            # send the delivery beside it: the rest of the lane goes back to its leases, due
            # again in this order.
            if self.leases[claimed.delivery_id] - time.monotonic() < self.timeout:
                log.warning(
                    "%d deliveries to webhook endpoint %s waited out their lease: left to be "
                    "claimed again", len(lane) + 1, claimed.endpoint.id,
                )  # fmt: skip
                self._release([claimed, *lane])
                lane.clear()
                return
            # Nor, past the budget, to an endpoint that hangs: its lane went on after each
            # timeout, and the drain, waiting out the new attempt, claimed nothing for another
            # (a retry, a re-enabled endpoint's deliveries, a healthy endpoint's new events).
            if self.over and claimed.endpoint.id in self.hanging():
                self._release([claimed, *lane])
                lane.clear()
                return
            self.sending[claimed.delivery_id] = (claimed.endpoint.id, time.monotonic())
            try:
                outcome = await _send(
                    self.client, claimed, self.refusals[claimed.endpoint.url], self.timeout
                )
            except Exception as exc:
                # Whatever a receiver answers must not stop the drain: raised here, no attempt
                # of the batch was recorded, and every endpoint's deliveries were sent again
                # when their leases ran out (a Retry-After too long for int(), twice). The
                # attempt is recorded as failed and retried on the schedule.
                log.exception("webhook delivery %s: the attempt failed", claimed.delivery_id)
                outcome = Outcome(claimed, utc_now(), None, 0, None, f"{type(exc).__name__}")
            finally:
                del self.sending[claimed.delivery_id]
            if outcome.status_code is None or outcome.latency_ms >= SLOW_SECONDS * 1000:
                self.slow_marks[claimed.endpoint.id] = time.monotonic() + SLOW_MEMORY_SECONDS
            if outcome.status_code is None:
                self.silent_marks[claimed.endpoint.id] = time.monotonic() + SLOW_MEMORY_SECONDS
            # Looked up after the send: a record meanwhile took the list it replaced.
            self.sent.append(outcome)

    def _release(self, claimed: Sequence[Claimed]) -> None:
        """Left unsent: due again at the next record, if their lease has a second to spare."""
        for c in claimed:
            self.released.append((c, self.leases.pop(c.delivery_id)))


_deliveries = cast(Table, WebhookDelivery.__table__)
_events = cast(Table, Event.__table__)
_endpoints = cast(Table, WebhookEndpoint.__table__)


# Due again when it first fell due, not at the hand-back: a loan's later event, written
# while the drain held its earlier ones, fell due before the hand-back, and the next claim,
# in order of due time, took it first (a tester saw a loan's sequence 834 sent 4 s before
# 14 earlier events of the loan, as a drain ended beside a hanging endpoint).
_DUE_AGAIN = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("delivery_id"))
    .values(next_attempt_at=bindparam("due_at"), leased_until=None)
)


# A write of the drain's that lost a race in the database (a deadlock, a lock not granted in
# time), written again in a new transaction.
_again_if_transient = retrying(
    retry=retry_if_exception(is_transient),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.1, max=1.0),
    reraise=True,
)


@_again_if_transient
async def _due_again(claimed: Sequence[Claimed]) -> None:
    """Deliveries this drain held and leaves unsent, for the next claim, in their turn: in id
    order, as the other writers of deliveries lock them, and again after a lost race. A
    hand-back that deadlocked failed the drain, and its deliveries waited out their lease (a
    tester's, 777 endpoints on PostgreSQL)."""
    if claimed:
        async with session_scope() as session:
            in_order = sorted(claimed, key=lambda c: c.delivery_id)
            await session.execute(
                _DUE_AGAIN, [{"delivery_id": c.delivery_id, "due_at": c.due_at} for c in in_order]
            )


async def _claim(now: datetime, limit: int, excluding: Collection[str]) -> list[Claimed]:
    d, w, e = _deliveries.c, _endpoints.c, _events.c
    async with session_scope() as session:
        due = (
            select(d.id, d.next_attempt_at)
            .join(_endpoints, w.id == d.endpoint_id)
            .where(d.status == DeliveryStatus.PENDING, d.next_attempt_at <= now, w.enabled)
            .where(d.endpoint_id.not_in(excluding) if excluding else true())
            .order_by(d.next_attempt_at, d.event_position)
            .limit(limit)
            .with_for_update(of=_deliveries, skip_locked=True)
        )
        due_at = {r.id: r.next_attempt_at for r in await session.execute(due)}
        if not due_at:
            return []
        rows = (
            await session.execute(
                update(_deliveries)
                .where(d.id.in_(list(due_at)))
                .values(next_attempt_at=now + LEASE, leased_until=now + LEASE)
                .returning(d.id, d.attempts, d.event_position, d.endpoint_id)
            )
        ).all()
        events = {
            r.position: r
            for r in await session.execute(
                select(e.position, e.id, e.loan_id, e.type, e.created_at, e.data).where(
                    e.position.in_({r.event_position for r in rows})
                )
            )
        }
        endpoints = {
            r.id: Target(r.id, r.url, [signing.key(s) for s in _secrets(r, now)], _address(r.url))
            for r in await session.execute(
                select(
                    w.id, w.secret, w.url, w.previous_secret, w.previous_secret_expires_at
                ).where(w.id.in_({r.endpoint_id for r in rows}))
            )
        }
    # An event owed to several endpoints is encoded once.
    bodies = {
        position: payload(event.type, event.created_at, event.data, position)
        for position, event in events.items()
    }
    return [
        Claimed(
            r.id, r.attempts, events[r.event_position].id, bodies[r.event_position],
            endpoints[r.endpoint_id], r.event_position, events[r.event_position].loan_id,
            due_at[r.id],
        )
        for r in rows
    ]  # fmt: skip


def _address(url: str) -> httpx.URL | None:
    try:
        return httpx.URL(url)
    except httpx.InvalidURL:
        return None


def _secrets(endpoint: Any, now: datetime) -> list[str]:
    in_force = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires and expires > now:
        in_force.append(endpoint.previous_secret)
    return in_force


async def _refusals(urls: set[str]) -> dict[str, str | None]:
    """Each URL's reason not to be sent to now, or None. Checked once per claim and URL
    rather than per delivery: a name is resolved again for every claim (DNS rebinding), but
    not 500 times for one, each a getaddrinfo in a thread."""
    allow_private = get_settings().webhook_allow_private_targets

    async def refusal(url: str) -> str | None:
        try:
            await targets.check(url, allow_private=allow_private, must_resolve=True)
        except targets.TargetNotAllowed as exc:
            return f"target not allowed: {exc}"
        return None

    ordered = sorted(urls)
    reasons = await asyncio.gather(*(refusal(url) for url in ordered))
    return dict(zip(ordered, reasons, strict=True))


async def _send(
    client: httpx.AsyncClient, claimed: Claimed, refused: str | None, seconds: float
) -> Outcome:
    """One attempt, over within ``seconds`` whatever the receiver does: the client's timeout
    bounds each read, and a receiver trickling its answer a byte at a time held an attempt
    for minutes, past its lease (another dispatcher sent the delivery beside it) and, on the
    embedded default, every other endpoint's deliveries behind it (a tester's)."""
    started = time.perf_counter()
    attempted_at = utc_now()

    def outcome(status: int | None, excerpt: str | None, error: str | None,
                retry_after: timedelta | None = None) -> Outcome:  # fmt: skip
        latency = int((time.perf_counter() - started) * 1000)
        excerpt, error = _storable(excerpt), _storable(error)
        return Outcome(claimed, attempted_at, status, latency, excerpt, error, retry_after)

    if refused is not None:
        return outcome(None, None, refused)
    address = claimed.endpoint.address
    if address is None:
        return outcome(None, None, "InvalidURL: httpx cannot send to this URL")
    body, event_id = claimed.body, claimed.event_id
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "Loanwatch-Webhooks/1",
        # The excerpt is read as sent: a compressed answer unpacked whole (a few hundred bytes
        # of nested gzip made 300 MB) took the process's memory and its event loop (a tester's).
        "accept-encoding": "identity",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header_for_keys(
            claimed.endpoint.keys, event_id, timestamp, body
        ),
    }
    try:
        async with asyncio.timeout(seconds):
            async with client.stream("POST", address, content=body, headers=headers) as response:
                excerpt = await _excerpt(response)
    except (httpx.TimeoutException, TimeoutError):
        return outcome(None, None, "timed out")
    except httpx.HTTPError as exc:
        return outcome(None, None, f"{type(exc).__name__}: {exc}"[:500])
    status = response.status_code
    return outcome(status, excerpt, None, _retry_after(response) if status in (429, 503) else None)


def _storable(text: str | None) -> str | None:
    """The receiver's words as PostgreSQL's text can hold them, which is without NUL: an answer
    with one failed the attempt log's write, and with it the drain (a tester's bomb of zeros)."""
    return None if text is None else text.replace("\x00", "\ufffd")


async def _excerpt(response: httpx.Response) -> str:
    """The start of the answer, for the attempt log: no more of it is read (a 30 MB answer was
    read whole to keep its first 500 characters), and never unpacked: a receiver that
    compresses it all the same is told so instead."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"(a {encoding[:50]}-encoded answer, not read)"
    head = bytearray()
    async for chunk in response.aiter_raw():
        head += chunk
        if len(head) >= 4 * EXCERPT:  # EXCERPT characters of UTF-8 at most
            break
    return head.decode(response.encoding or "utf-8", errors="replace")[:EXCERPT]


def _retry_after(response: httpx.Response) -> timedelta | None:
    """The receiver's ``Retry-After`` (seconds, or an HTTP date), at most the longest wait the
    retries honour; None when there is none that reads. Whatever the receiver sends: a number
    too large for a timedelta, or a digit that is not ASCII, raised in the drain, which then
    recorded no attempt and sent every endpoint's deliveries again (a tester's)."""
    value = response.headers.get("retry-after", "").strip()
    if value.isascii() and value.isdigit():
        # Python refuses to read an int of more than 4,300 digits; any of more than 9 is
        # beyond the longest wait anyway.
        seconds = int(value) if len(value) <= 9 else retry.LONGEST_WAIT_SECONDS
        return timedelta(seconds=min(seconds, retry.LONGEST_WAIT_SECONDS))
    try:
        return min(parsedate_to_datetime(value) - utc_now(), retry.LONGEST_WAIT)
    except (TypeError, ValueError, OverflowError):
        return None


# Sent deliveries whose record is lost are sent again once their lease runs out, and the
# attempt log misses the first attempt: a record that lost a race in the database (a deadlock,
# a lock not granted in time) is written again in a new transaction instead.
@_again_if_transient
async def _record(outcomes: Sequence[Outcome], now: datetime) -> None:
    async with session_scope() as session:
        # An endpoint deleted while its deliveries were in flight took them with it: their
        # attempts have nothing to belong to, and must not fail the batch's other records.
        # The endpoints are locked first, as a delete locks them (and in one order, as other
        # dispatchers do): a delete waits until these are written. NO KEY UPDATE, so events
        # fanned out to these endpoints meanwhile are not held up.
        existing = set(
            await session.scalars(
                select(WebhookEndpoint.id)
                .where(WebhookEndpoint.id.in_({o.claimed.endpoint.id for o in outcomes}))
                .order_by(WebhookEndpoint.id)
                .with_for_update(key_share=True)
            )
        )
        await _record_existing(
            session, [o for o in outcomes if o.claimed.endpoint.id in existing], now
        )
    _count(outcomes)


async def _record_existing(
    session: AsyncSession, outcomes: Sequence[Outcome], now: datetime
) -> None:
    """Each attempt, each delivery's next state (delivered, retried later, failed) and its
    endpoint's health, for endpoints that still exist and are locked by the caller."""
    if not outcomes:
        return
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
        delay = retry.next_delay(attempts, o.retry_after)
        if delay is None:
            failed.append(row)
        elif o.status_code == 410:
            # The endpoint is disabled below; the delivery waits with the rest of its
            # deliveries, and goes at once when an admin enables the endpoint again.
            gone.add(o.claimed.endpoint.id)
            retried.append({**row, "next": now})
        else:
            retried.append({**row, "next": now + delay})
    await session.execute(
        insert(WebhookAttempt),
        [
            {"delivery_id": o.claimed.delivery_id, "attempted_at": o.attempted_at,
             "status_code": o.status_code, "latency_ms": o.latency_ms,
             "response_excerpt": o.excerpt, "error": o.error}
            for o in outcomes
        ],
    )  # fmt: skip
    table = _deliveries
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
                    attempts=bindparam("attempts"), last_attempt_at=bindparam("at"),
                    leased_until=None, **values,
                ),
                rows,
            )  # fmt: skip
    await _track_endpoint_health(session, outcomes, gone, now, settings.webhook_disable_after_days)


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
        # NO KEY UPDATE, as above: FOR UPDATE waited for the key-share locks of requests
        # fanning events out to this endpoint, and deadlocked with them (a payment's 500).
        endpoint = await session.get(
            WebhookEndpoint, endpoint_id, with_for_update={"key_share": True}
        )
        if endpoint is None or not endpoint.enabled:
            continue
        endpoint.failing_since = endpoint.failing_since or now
        reason = None
        if endpoint_id in gone:
            reason = "the receiver answered 410 Gone"
        elif endpoint.failing_since <= now - timedelta(days=disable_after_days):
            error = o.error or f"HTTP {o.status_code}"
            since = utc_text(endpoint.failing_since)
            reason = f"every delivery failed since {since} (last: {error})"
        if reason:
            endpoint.enabled, endpoint.disabled_reason = False, reason
            endpoint.updated_at = now
            log.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)


def _count(outcomes: Sequence[Outcome]) -> None:
    from app.ops import metrics

    delivered = sum(o.ok for o in outcomes)
    if delivered:
        metrics.WEBHOOK_ATTEMPTS.labels(outcome="delivered").inc(delivered)
    if len(outcomes) > delivered:
        metrics.WEBHOOK_ATTEMPTS.labels(outcome="failed").inc(len(outcomes) - delivered)
