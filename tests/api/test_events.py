"""The events feed's `after`: an event id, or an instant (naive meaning UTC, any offset;
off-calendar is a 422)."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
from sqlalchemy import select, text

from app import clock
from app.api.pagination import encode_cursor
from app.db import session_scope
from app.events.models import Event
from app.events.service import emit, emit_many
from tests.conftest import ADMIN_DSN
from tests.factories import world


async def test_events_after_an_instant(client: httpx.AsyncClient) -> None:
    w = await world(client)
    start = datetime.now(UTC) - timedelta(seconds=1)
    await w.loan()

    def types(page: dict[str, Any]) -> list[str]:
        return [e["type"] for e in page["items"]]

    shanghai = start.astimezone(UTC).replace(tzinfo=None) + timedelta(hours=8)
    for after in (start.isoformat(), start.isoformat().replace("+00:00", "Z"),
                  shanghai.isoformat() + "+08:00"):  # fmt: skip
        page = await w.get(f"/v1/events?after={quote(after)}", headers=w.admin)
        assert "loan.created" in types(page), after
    later = datetime.now(UTC) + timedelta(minutes=1)
    naive = later.replace(tzinfo=None)
    for after in (later.isoformat(), (naive + timedelta(hours=8)).isoformat() + "+08:00"):
        assert types(await w.get(f"/v1/events?after={quote(after)}", headers=w.admin)) == []

    # RFC 3339 in full: which zone a time without an offset meant is a guess.
    for bad in ("0001-01-01T00:00:00+14:00", "yesterday", "2026-12-04", "2026-12-04T",
                naive.isoformat(), "2026-12-04T20:00Z", "2026-12-04T20:00:00+0800"):  # fmt: skip
        response = await client.get(f"/v1/events?after={quote(bad)}", headers=w.admin)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "after"


def cursor_of(path: str, key: str) -> str:
    """A cursor as the API writes one, check included, for a key of our choosing."""
    return encode_cursor(path, key)


async def test_integer_cursors_outside_the_keys_are_refused(client: httpx.AsyncClient) -> None:
    """Lists keyed by integers (events, ledger transactions, deliveries) read their cursor as
    ASCII digits within a BIGINT: a larger one once reached PostgreSQL and answered 500."""
    w = await world(client)
    loan = await w.loan()
    hook = await w.post("/v1/webhook-endpoints", {"url": "https://hooks.example.com/h"},
                        headers=w.admin, expect=201)  # fmt: skip
    lists = ("/v1/events", f"/v1/loans/{loan['id']}/transactions",
             f"/v1/webhook-endpoints/{hook.json()['id']}/deliveries")  # fmt: skip
    for path in lists:
        # A real cursor (the largest key there could be) still reads: an empty page. The
        # feed's is the event's transaction and position.
        largest = "999999999999999999"
        feed = path == "/v1/events"
        top = cursor_of(path, f"{largest}.{largest}" if feed else largest)
        assert (await w.get(f"{path}?cursor={top}", headers=w.admin))["items"] == []
        refused = ["99999999999999999999999", "\u0663", "-5"]
        refused += [f"1.{largest}9", "1", "1.2.3"] if feed else ["1.5"]
        for key in refused:
            cursor = cursor_of(path, key)
            response = await client.get(f"{path}?cursor={cursor}", headers=w.admin)
            assert response.status_code == 422, (path, key, response.text)
            assert response.json()["errors"][0]["field"] == "cursor"


async def test_events_after_an_event(client: httpx.AsyncClient) -> None:
    """A subscriber resumes from the last event it received (its webhook-id), even among
    events one transaction wrote at one instant, which `after=<instant>` would skip."""
    w = await world(client)
    await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    await w.post("/v1/close-runs", {"as_of": "2026-03-20"}, headers=w.admin, expect=201)
    feed = (await w.get("/v1/events?limit=200", headers=w.admin))["items"]
    stamps = [e["timestamp"] for e in feed]
    assert len(set(stamps)) < len(stamps)  # some events share their instant
    for n, event in enumerate(feed):
        page = await w.get(f"/v1/events?limit=200&after={event['id']}", headers=w.admin)
        listed = [e["id"] for e in page["items"]]
        # Besides what follows it, the events of transactions running when it was written,
        # which PostgreSQL counts over the whole cluster (another test's database too): those
        # already read come again, as webhooks.md says; never the event itself.
        read = {e["id"] for e in feed[: n + 1]}
        assert [i for i in listed if i not in read] == [e["id"] for e in feed[n + 1 :]]
        assert event["id"] not in listed
    unknown = await client.get("/v1/events?after=evt_nope", headers=w.admin)
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "after"


async def test_events_by_type_and_pattern_as_endpoints_subscribe(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    await w.pay(loan["id"], "50.00", "2026-01-20")
    feed = (await w.get("/v1/events?limit=200", headers=w.admin))["items"]

    async def types(query: str) -> list[str]:
        page = await w.get(f"/v1/events?limit=200&type={query}", headers=w.admin)
        return [e["type"] for e in page["items"]]

    assert await types("loan.created") == ["loan.created"]
    assert await types("payment.*") == [e["type"] for e in feed if e["type"].startswith("pay")]
    assert await types("loan.created,payment.received") == [
        e["type"] for e in feed if e["type"] in ("loan.created", "payment.received")
    ]
    assert await types("*") == [e["type"] for e in feed]
    for bad in ("bogus", "loan.created,nope.*", "loan"):
        refused = await client.get(f"/v1/events?type={bad}", headers=w.admin)
        assert refused.status_code == 422, bad
        assert refused.json()["errors"][0]["field"] == "type"


async def test_the_event_feed_is_polled_with_an_etag(client: httpx.AsyncClient) -> None:
    w = await world(client)
    await w.loan(principal="1200.00")
    first = await client.get("/v1/events", headers=w.admin)
    etag = first.headers["etag"]
    same = await client.get("/v1/events", headers={**w.admin, "If-None-Match": etag})
    assert same.status_code == 304
    await w.loan(principal="1200.00")
    moved = await client.get("/v1/events", headers={**w.admin, "If-None-Match": etag})
    assert moved.status_code == 200
    assert len(moved.json()["items"]) == len(first.json()["items"]) + 1


async def test_the_feed_does_not_pass_an_event_still_being_written(
    client: httpx.AsyncClient,
) -> None:
    """An event's position is drawn at its insert: one written by a transaction still running
    has a lower position than events committed after it. A reader that resumed after the
    last position it had seen skipped it for good once it committed (a tester's, 5 of 900
    under 8 writers). The feed waits for it instead."""
    w = await world(client)
    before = (await w.get("/v1/events?limit=200", headers=w.admin))["items"]
    async with session_scope() as slow:
        # Stands for a payment whose transaction has written its event but not committed.
        slow_id = await emit(slow, "payment.received", {"loan_id": "loan_x"}, fan_out=False)
        await w.loan()  # commits loan.created, and more, behind it
        # The reader polls meanwhile and resumes after the last event it got.
        page = await w.get("/v1/events?limit=200", headers=w.admin)
        assert [e["id"] for e in page["items"]] == [e["id"] for e in before]
        await slow.commit()
    resumed = f"&after={before[-1]['id']}" if before else ""
    after = (await w.get(f"/v1/events?limit=200{resumed}", headers=w.admin))["items"]
    assert after[0]["id"] == slow_id
    assert "loan.created" in [e["type"] for e in after[1:]]


async def test_a_resume_after_a_delivered_event_lists_an_older_transaction_committed_later(
    client: httpx.AsyncClient,
) -> None:
    """A transaction that took its id first commits after another's event was delivered: the
    feed lists it before that event, and a subscriber resuming after the webhook's event (as
    docs/webhooks.md tells it to) never saw it (a tester's, on PostgreSQL under load)."""
    w = await world(client)
    async with session_scope() as slow:
        # Stands for a payment waiting for its loan's lock, its id taken by a first write.
        await slow.execute(text("SELECT pg_current_xact_id()"))
        delivered = await w.loan()  # commits loan.created, which a webhook brings at once
        async with session_scope() as dispatcher:  # the feed waits for the slow one; not it
            resumed = await dispatcher.scalar(
                select(Event.id).where(Event.type == "loan.created",
                                       Event.loan_id == delivered["id"])
            )  # fmt: skip
        slow_id = await emit(slow, "payment.received", {"loan_id": "loan_x"}, fan_out=False)
        await slow.commit()
    after = (await w.get(f"/v1/events?limit=200&after={resumed}", headers=w.admin))["items"]
    assert slow_id in [e["id"] for e in after]
    assert resumed not in [e["id"] for e in after]


async def test_a_busy_database_beside_does_not_hide_committed_events(
    client: httpx.AsyncClient,
) -> None:
    """A transaction of another database that ended between the feed's snapshot and its read
    of the sessions was counted as this database's: it hid a just-committed event from about
    3 reads in 100 while the other database's transactions came and went (a CI run's: the
    other test worker's database)."""
    w = await world(client)
    stop = asyncio.Event()

    async def write_elsewhere(hold: float) -> None:
        neighbour = await asyncpg.connect(ADMIN_DSN)  # the server's maintenance database
        try:
            await neighbour.execute("CREATE TEMP TABLE scratch (n int)")
            while not stop.is_set():
                async with neighbour.transaction():  # takes a transaction id, ends soon
                    await neighbour.execute("INSERT INTO scratch VALUES (1)")
                    await asyncio.sleep(hold)
        finally:
            await neighbour.close()

    writers = [asyncio.create_task(write_elsewhere(hold)) for hold in (0.002, 0.005, 0.01, 0.02)]
    try:
        hidden, last = 0, ""
        for _ in range(300):
            async with session_scope() as session:  # a neighbour's transaction may be older
                event_id = await emit(session, "payment.received", {}, fan_out=False)
                await session.commit()
            feed = await w.get(f"/v1/events?limit=200{last}", headers=w.admin)
            hidden += event_id not in [e["id"] for e in feed["items"]]
            last = f"&after={event_id}"
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert hidden == 0


async def test_a_loan_booked_in_arrears_is_announced_with_the_date_its_days_count_from(
    client: httpx.AsyncClient,
) -> None:
    """Its days past due and bucket are as of the business date: without that date a
    subscriber could not tell where they count from (a tester's)."""
    w = await world(client)
    today = clock.today()
    loan = await w.loan(principal="1200.00", term=6, disbursed_on=str(today - timedelta(days=45)))
    created = (await w.get("/v1/events?type=loan.created", headers=w.admin))["items"][0]["data"]
    assert created["loan_id"] == loan["id"]
    assert (created["days_past_due"], created["as_of"]) == (loan["days_past_due"], str(today))
    assert created["days_past_due"] > 0


async def test_events_written_together_are_in_the_feed_loan_by_loan() -> None:
    """The close's steps build their events from rows PostgreSQL and SQLite return in orders of
    their own: written together, they go in the feed loan by loan (a borrower's by borrower),
    each loan's in the order given, so both databases tell a close alike (a tester's)."""
    given = [
        ("loan_c", None, "x.one"),
        ("loan_a", None, "x.one"),
        ("loan_c", None, "x.two"),
        (None, "bor_b", "x.grade"),
        ("loan_b", None, "x.one"),
        (None, "bor_a", "x.grade"),
    ]
    async with session_scope() as session:
        await emit_many(session, [
            {"type": type_, "loan_id": loan_id, "data": {"borrower_id": borrower_id}}
            for loan_id, borrower_id, type_ in given
        ])  # fmt: skip
    async with session_scope() as session:
        feed = await session.execute(
            select(Event.loan_id, Event.data["borrower_id"].as_string(), Event.type)
            .order_by(Event.position)
        )  # fmt: skip
        assert [tuple(row) for row in feed] == [
            (None, "bor_a", "x.grade"), (None, "bor_b", "x.grade"), ("loan_a", None, "x.one"),
            ("loan_b", None, "x.one"), ("loan_c", None, "x.one"), ("loan_c", None, "x.two"),
        ]  # fmt: skip
