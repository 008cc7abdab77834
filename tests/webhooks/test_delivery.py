"""Outbound webhooks against a real local receiver, every delivery verified with the
independent standardwebhooks package."""

import asyncio
import gzip
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpcore
import httpx
import pytest
from dateutil.relativedelta import relativedelta
from sqlalchemy import func, select

from app import clock
from app.config import get_settings
from app.db import session_scope, utc_now
from app.events.models import Event
from app.scheduler import InProcessScheduler, Job, WebhookDispatcher
from app.webhooks import dispatcher, retry, transport
from app.webhooks.models import WebhookAttempt, WebhookDelivery
from tests.conftest import TEST_DSN
from tests.factories import World, world
from tests.processes import free_port
from tests.webhooks.receiver import receiving


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", True)


async def endpoint(w: World, url: str, event_types: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "description": "collections"}
    if event_types:
        body["event_types"] = event_types
    response = await w.post("/v1/webhook-endpoints", body, headers=w.admin, expect=201)
    return dict(response.json())


async def deliver(at: Any = None) -> int:
    return await dispatcher.drain(now=at)


async def endpoint_and_a_lane(w: World, url: str, *, payments: int) -> dict[str, Any]:
    """An endpoint, then a loan paid ``payments`` times: one lane of events for it, in order."""
    hook = await endpoint(w, url)
    loan = await w.loan()
    for _ in range(payments):
        await w.pay(loan["id"], "10.00")
    return hook


async def until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Waits, a bounded time, for a drain running in the background to make this true."""
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


async def pending_due_times() -> list[datetime]:
    async with session_scope() as session:
        return list(await session.scalars(
            select(WebhookDelivery.next_attempt_at).where(WebhookDelivery.status == "pending")
        ))  # fmt: skip


async def test_private_targets_are_refused_unless_allowed(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = await world(client)
    monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", False)
    # The last eight carry a private IPv4 address that NAT64 (well-known and local-use),
    # IPv4-compatible, 6to4 and SIIT's IPv4-translated addresses reach on networks that
    # translate them.
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://10.1.2.3/h",
                "http://localhost:8080/h", "http://[::1]/h", "http://[64:ff9b::a9fe:a9fe]/m",
                "http://[64:ff9b::a00:1]/h", "http://[::a9fe:a9fe]/h", "http://[::127.0.0.1]/h",
                "http://[2002:a9fe:a9fe::]/h", "http://[2002:7f00:1::]/h",
                "http://[64:ff9b:1:a9fe:a9:fe00::]/h",
                "http://[::ffff:0:a9fe:a9fe]/h",
                # Not globally reachable, though Python's is_global says so (a tester's)
                "http://[fec0::1]/a", "http://192.0.0.8/a", "http://[3fff::1]/a",
                "http://[5f00::1]/a", "http://192.88.99.1/a",
                # loopback names by definition, resolved or not (a tester's)
                "http://localhost./h", "http://LocalHost.:8080/x",
                "http://foo.localhost/h"):  # fmt: skip
        response = await w.post("/v1/webhook-endpoints", {"url": url}, headers=w.admin)
        assert response.status_code == 422, url
        assert response.json()["code"] == "webhook_url_not_allowed"
    for url in ("ftp://x.test/h", "https://\u008dn", "https://x.test:99999/h", "http://x.test:0/h", "https://\u0012[/h",
                "http://[::1/h"):  # fmt: skip
        bad = await w.post("/v1/webhook-endpoints", {"url": url}, headers=w.admin)
        assert bad.status_code == 422, url
    for url in ("https://user:pw@x.test/h", "https://token@x.test/h", "https://:pw@x.test/h"):
        secret = await w.post("/v1/webhook-endpoints", {"url": url}, headers=w.admin)
        assert (secret.status_code, secret.json()["code"]) == (422, "webhook_url_not_allowed")
        assert "credentials" in secret.json()["errors"][0]["message"]
    listed = await w.get("/v1/webhook-endpoints", headers=w.admin)
    assert listed["items"] == []
    unknown = await w.post("/v1/webhook-endpoints",
                           {"url": "https://x.test/h", "event_types": ["loan.exploded"]},
                           headers=w.admin)  # fmt: skip
    assert unknown.status_code == 422
    # webhook.test goes to the endpoint tested alone: subscribed to it, one got nothing.
    for test_only in (["webhook.test"], ["loan.*", "webhook.*"]):
        refused = await w.post("/v1/webhook-endpoints",
                               {"url": "https://x.test/h", "event_types": test_only},
                               headers=w.admin)  # fmt: skip
        assert refused.status_code == 422, refused.text
        assert "not a type to subscribe to" in refused.json()["errors"][0]["message"]
    assert (await w.post("/v1/webhook-endpoints", {"url": "https://x.test/h"})).status_code == 403


async def test_an_event_arrives_signed_with_its_sequence(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        assert hook["secret"].startswith("whsec_")
        assert hook["event_types"] == ["*"]
        loan = await w.loan()
        assert await deliver() == 1
        (request,) = receiver.received
        payload = request.verified(hook["secret"])
        assert payload["type"] == "loan.created"
        assert payload["data"]["loan_id"] == loan["id"]
        assert isinstance(payload["data"]["sequence"], int)
        assert request.headers["webhook-id"].startswith("evt_")
        listed = await w.get(f"/v1/webhook-endpoints/{hook['id']}", headers=w.admin)
        assert "secret" not in listed
        deliveries = f"/v1/webhook-endpoints/{hook['id']}/deliveries"
        log = await w.get(deliveries, headers=w.admin)
        (delivery,) = log["items"]
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
        assert delivery["attempt_log"][0]["status_code"] == 200
        assert await deliver() == 0  # nothing twice
        # Operators poll the log: 304 while nothing was delivered since.
        etag = (await client.get(deliveries, headers=w.admin)).headers["etag"]
        again = await client.get(deliveries, headers={**w.admin, "If-None-Match": etag})
        assert again.status_code == 304


async def test_an_endpoint_deleted_mid_delivery_leaves_the_others_recorded(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    with receiving() as slow, receiving() as quick:
        slow.script = [("hang", 1.0)]
        doomed = await endpoint(w, slow.url)
        kept = await endpoint(w, quick.url)
        await w.loan()
        in_flight = asyncio.create_task(deliver())
        for _ in range(500):  # until the slow receiver has taken its request
            if not slow.script:
                break
            await asyncio.sleep(0.01)
        deleted = await client.delete(f"/v1/webhook-endpoints/{doomed['id']}", headers=w.admin)
        assert deleted.status_code == 204
        assert await in_flight == 2
        log = await w.get(f"/v1/webhook-endpoints/{kept['id']}/deliveries", headers=w.admin)
        (delivery,) = log["items"]
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
        assert await deliver() == 0


async def test_fails_three_times_then_succeeds(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [500, 503, 400]
        hook = await endpoint(w, receiver.url)
        await w.loan()
        now = utc_now()
        assert await deliver(now) == 1
        assert await deliver(now) == 0  # the retry is not due yet
        for later in (timedelta(seconds=6), timedelta(minutes=6), timedelta(minutes=40)):
            assert await deliver(now + later) == 1
        ids = {r.headers["webhook-id"] for r in receiver.received}
        assert len(receiver.received) == 4
        assert len(ids) == 1
        for request in receiver.received:
            request.verified(hook["secret"])
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        (delivery,) = log["items"]
        assert delivery["status"] == "delivered"
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 503, 400, 200]
        assert await deliver(now + timedelta(days=3)) == 0


@pytest.mark.parametrize(
    "retry_after",
    ["99999999999999999999", "9" * 5000, "\u00b2", "Fri, 31 Dec 9999 23:59:59 GMT",
     "Wed, 21 Oct 2015 07:28:00", "soon", "-5"],
)  # fmt: skip
async def test_a_receivers_retry_after_never_stops_the_drain(
    client: httpx.AsyncClient, retry_after: str
) -> None:
    """Whatever a receiver answers in Retry-After, its attempt is recorded and retried within
    a day, and the other endpoints' deliveries are recorded as delivered, not sent again (a
    number too large for a timedelta, or a non-ASCII digit, raised in the drain: a tester's)."""
    w = await world(client)
    with receiving() as unwell, receiving() as well:
        unwell.script = [("headers", 503, {"retry-after": retry_after.encode().decode("latin-1")})]
        sick, healthy = await endpoint(w, unwell.url), await endpoint(w, well.url)
        await w.loan()
        now = utc_now()
        assert await deliver(now) == 2
        logs = [
            (await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin))
            for hook in (sick, healthy)
        ]
        (retried,), (delivered,) = (log["items"] for log in logs)
        assert [a["status_code"] for a in retried["attempt_log"]] == [503]
        assert retried["status"] == "pending"
        assert (
            now
            < datetime.fromisoformat(retried["next_attempt_at"])
            <= now + timedelta(days=1, seconds=1)
        )
        assert delivered["status"] == "delivered"
        # A day on, the unwell endpoint's retry alone is sent.
        assert await deliver(now + timedelta(days=1, seconds=2)) == 1
        assert (len(unwell.received), len(well.received)) == (2, 1)


async def test_an_attempt_that_fails_in_the_dispatcher_is_recorded_and_retried(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever raises while an answer is read is that attempt's failure, not the drain's:
    the batch's other attempts are recorded, and nothing is sent twice."""
    w = await world(client)

    def unreadable(response: httpx.Response) -> None:
        raise RuntimeError("an answer nobody foresaw")

    monkeypatch.setattr(dispatcher, "_retry_after", unreadable)
    with receiving() as unwell, receiving() as well:
        unwell.script = [503]
        sick, healthy = await endpoint(w, unwell.url), await endpoint(w, well.url)
        await w.loan()
        now = utc_now()
        assert await deliver(now) == 2
        (failed,) = (await w.get(f"/v1/webhook-endpoints/{sick['id']}/deliveries",
                                 headers=w.admin))["items"]  # fmt: skip
        (delivered,) = (await w.get(f"/v1/webhook-endpoints/{healthy['id']}/deliveries",
                                    headers=w.admin))["items"]  # fmt: skip
        assert [(a["status_code"], a["error"]) for a in failed["attempt_log"]] == [
            (None, "RuntimeError")
        ]
        assert (failed["status"], delivered["status"]) == ("pending", "delivered")
        assert await deliver(now + timedelta(seconds=6)) == 1  # the retry, alone
        assert (len(unwell.received), len(well.received)) == (2, 1)


async def test_a_receiver_down_then_up_gets_everything(client: httpx.AsyncClient) -> None:
    w = await world(client)
    port = free_port()
    hook = await endpoint(w, f"http://127.0.0.1:{port}/hooks")
    for _ in range(3):
        await w.loan()
    now = utc_now()
    assert await deliver(now) == 3  # connection refused, three times
    async with session_scope() as session:
        errors = list(await session.scalars(select(WebhookAttempt.error)))
    assert all(e and "Connect" in e for e in errors), errors
    with receiving(port) as receiver:
        assert await deliver(now + timedelta(seconds=10)) == 3
        assert {r.verified(hook["secret"])["type"] for r in receiver.received} == {"loan.created"}
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 3


async def test_an_endpoint_failing_for_days_is_disabled(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [500] * 50
        hook = await endpoint(w, receiver.url)
        await w.loan()
        now = utc_now()
        elapsed = timedelta()
        for step in (timedelta(0), timedelta(seconds=6), timedelta(minutes=6),
                     timedelta(minutes=31), timedelta(hours=2, minutes=1),
                     timedelta(hours=5, minutes=1), timedelta(hours=10, minutes=1),
                     timedelta(hours=10, minutes=1), timedelta(hours=10, minutes=1),
                     timedelta(hours=10, minutes=1), timedelta(hours=24, minutes=1)):  # fmt: skip
            elapsed += step
            await deliver(now + elapsed)
        got = await w.get(f"/v1/webhook-endpoints/{hook['id']}", headers=w.admin)
        assert elapsed < timedelta(days=5)
        assert got["enabled"] is True
        await w.loan()  # a fresh event, still failing, five days after the first failure
        await deliver(now + timedelta(days=5, minutes=1))
        got = await w.get(f"/v1/webhook-endpoints/{hook['id']}", headers=w.admin)
        assert got["enabled"] is False
        assert got["disabled_reason"].startswith("every delivery failed since ")
        assert "+00:00" not in got["disabled_reason"]  # RFC 3339 with Z, as the API writes
        # Changed when the dispatcher disabled it (a tester's: it kept its creation time).
        assert datetime.fromisoformat(got["updated_at"]) == now + timedelta(days=5, minutes=1)
        # Nothing is sent to a disabled endpoint; re-enabling resumes what is pending.
        await w.loan()
        sent = len(receiver.received)
        await deliver(now + timedelta(days=6))
        assert len(receiver.received) == sent
        receiver.script = []
        patched = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                     json={"enabled": True}, headers=w.admin)  # fmt: skip
        assert patched.json()["disabled_reason"] is None
        assert await deliver(now + timedelta(days=6)) >= 1


async def test_410_gone_disables_at_once(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [410]
        hook = await endpoint(w, receiver.url)
        await w.loan()
        await deliver()
        got = await w.get(f"/v1/webhook-endpoints/{hook['id']}", headers=w.admin)
        assert got["enabled"] is False
        assert "410" in got["disabled_reason"]
        # A test sent now would never arrive: refused, rather than accepted and lost.
        test = await client.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=w.admin)
        assert (test.status_code, test.json()["errors"][0]["field"]) == (422, "enabled")
        # The event it answered 410 to waits; enabled again, it goes at once.
        assert await deliver(utc_now() + timedelta(days=1)) == 0
        enabled = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                     json={"enabled": True}, headers=w.admin)  # fmt: skip
        assert enabled.status_code == 200, enabled.text
        assert await deliver() == 1
        assert [r.verified(hook["secret"])["type"] for r in receiver.received] == [
            "loan.created", "loan.created",
        ]  # fmt: skip
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        (delivery,) = log["items"]
        assert delivery["status"] == "delivered"
        assert [a["status_code"] for a in delivery["attempt_log"]] == [410, 200]


async def test_enabled_again_every_waiting_delivery_goes_at_once(
    client: httpx.AsyncClient,
) -> None:
    """Not only the one answered 410: a delivery whose retry was set minutes or hours ahead
    by failures before the endpoint was disabled goes too."""
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [500, 500, 410]
        hook = await endpoint(w, receiver.url)
        await w.loan()
        now = utc_now()
        assert await deliver(now) == 1  # 500: again in 5 s
        assert await deliver(now + timedelta(seconds=6)) == 1  # 500: again in 5 min
        await w.loan()
        assert await deliver(now + timedelta(seconds=6)) == 1  # 410: disabled
        assert (await w.get(f"/v1/webhook-endpoints/{hook['id']}", headers=w.admin))[
            "enabled"
        ] is False
        enabled = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                     json={"enabled": True}, headers=w.admin)  # fmt: skip
        assert enabled.status_code == 200, enabled.text
        assert await deliver() == 2
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        assert {d["status"] for d in log["items"]} == {"delivered"}


async def test_a_patch_does_not_wait_for_events_being_fanned_out_to_the_endpoint(
    client: httpx.AsyncClient,
) -> None:
    """A transaction that wrote a delivery holds a key-share lock on its endpoint (the
    foreign key) until it commits: the endpoint's own writes must not wait for it, or the
    dispatcher recording a failure and a payment fanning out deadlock (a payment's 500)."""
    w = await world(client)
    await w.loan()  # an event from before the endpoint: nothing owed to it yet
    hook = await endpoint(w, "http://127.0.0.1:9/hooks")
    async with session_scope() as session:  # a request's transaction, not yet committed
        position = await session.scalar(select(func.max(Event.position)))
        owed = WebhookDelivery(endpoint_id=hook["id"], event_position=position,
                               status="pending", attempts=0, next_attempt_at=utc_now())  # fmt: skip
        session.add(owed)
        await session.flush()
        patched = await asyncio.wait_for(
            client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                         json={"description": "moved"}, headers=w.admin),
            timeout=5,
        )  # fmt: skip
        assert patched.status_code == 200, patched.text
        await session.rollback()


async def test_an_attempt_whose_record_loses_a_race_is_recorded_not_sent_again(
    client: httpx.AsyncClient, impatient_database: None
) -> None:
    """Recording the attempts locks their endpoints; a record that gives up on that lock (or
    deadlocks) is written again, not left to the lease, which would send the delivery a second
    time and lose the first attempt from the log."""
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        await w.loan()
        holder = await asyncpg.connect(TEST_DSN)
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM webhook_endpoint WHERE id = $1 FOR UPDATE", hook["id"]
                )
                drained = asyncio.create_task(deliver())
                # The first record waits for the endpoint, then gives up (lock_timeout).
                await until_lock_waits(holder, present=True)
                await until_lock_waits(holder, present=False)
            assert await asyncio.wait_for(drained, timeout=10) == 1
        finally:
            await holder.close()
        assert len(receiver.received) == 1
    log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
    [delivery] = log["items"]
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookAttempt)) == 1


async def until_lock_waits(connection: asyncpg.Connection, *, present: bool) -> None:
    """Until another backend of this database is (or is no longer) waiting for a lock."""
    waiting = (
        "SELECT count(*) > 0 FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(1000):
        if await connection.fetchval(waiting) is present:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"no backend {'began' if present else 'stopped'} waiting for a lock")


async def test_a_delivery_connects_only_to_addresses_its_own_look_up_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: a name that answered a public address to the dispatcher's check may
    answer a private one to the next look-up. The connection resolves the name once, checks
    what it found and connects to exactly that."""
    backend = transport.AsyncioBackend()
    with receiving() as receiver:
        monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", False)
        for host in ("localhost", "127.0.0.1"):
            with pytest.raises(httpcore.ConnectError, match="target not allowed"):
                await backend.connect_tcp(host, receiver.port, timeout=3)
        monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", True)
        stream = await backend.connect_tcp("localhost", receiver.port, timeout=3)
        assert stream.get_extra_info("server_addr")[1] == receiver.port
        await stream.aclose()


async def test_secret_rotation_signs_with_both_during_the_overlap(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        rotated = (await w.post(f"/v1/webhook-endpoints/{hook['id']}/rotate-secret", {},
                                headers=w.admin, expect=200)).json()  # fmt: skip
        assert rotated["secret"] != hook["secret"]
        await w.loan()
        await deliver()
        request = receiver.received[-1]
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        request.verified(hook["secret"])
        request.verified(rotated["secret"])
        # After the overlap only the new secret signs.
        await w.loan()
        await deliver(utc_now() + timedelta(hours=25))
        request = receiver.received[-1]
        request.verified(rotated["secret"])
        with pytest.raises(Exception, match="signature"):
            request.verified(hook["secret"])
        # Retired at once (it leaked), the old secret signs nothing more, overlap or not.
        again = (await w.post(f"/v1/webhook-endpoints/{hook['id']}/rotate-secret",
                              {"retire_previous": True}, headers=w.admin,
                              expect=200)).json()  # fmt: skip
        await w.loan()
        await deliver()
        request = receiver.received[-1]
        assert len(request.headers["webhook-signature"].split(" ")) == 1
        request.verified(again["secret"])


async def test_event_type_filters(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as risk_receiver, receiving() as loans_receiver:
        risk_hook = await endpoint(w, risk_receiver.url, ["risk.*"])
        loans_hook = await endpoint(w, loans_receiver.url, ["loan.*"])
        await w.loan(disbursed_on="2026-01-10")
        # Long past due by then: the close raises flags.
        await w.post("/v1/close-runs", {"as_of": "2026-03-20"}, headers=w.admin, expect=201)
        await deliver()
        loan_types = {r.verified(loans_hook["secret"])["type"] for r in loans_receiver.received}
        assert "loan.created" in loan_types
        assert all(t.startswith("loan.") for t in loan_types)
        risk_types = {r.verified(risk_hook["secret"])["type"] for r in risk_receiver.received}
        assert "risk.flag_raised" in risk_types
        assert all(t.startswith("risk.") for t in risk_types)


async def test_a_test_event_reaches_an_endpoint_whatever_it_subscribes_to(
    client: httpx.AsyncClient,
) -> None:
    """An endpoint of promise.broken alone is tested with webhook.test all the same: the test
    asks whether the endpoint is reachable and its signatures check, not what it filters."""
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url, ["promise.broken"])
        sent = await w.post(f"/v1/webhook-endpoints/{hook['id']}/test", None, headers=w.admin,
                            expect=202)  # fmt: skip
        assert await deliver() == 1
        (request,) = receiver.received
        assert request.verified(hook["secret"])["type"] == "webhook.test"
        assert request.headers["webhook-id"] == sent.json()["id"]
        await w.loan()  # loan.created: not what it subscribes to
        assert await deliver() == 0


async def test_test_event_redelivery_and_recovery(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver, receiving() as bystander:
        hook = await endpoint(w, receiver.url)
        # Subscribed to everything, yet no other endpoint's test is ever its to receive.
        other = await endpoint(w, bystander.url)
        before_test = utc_now().isoformat()
        sent = await w.post(f"/v1/webhook-endpoints/{hook['id']}/test", None, headers=w.admin,
                            expect=202)  # fmt: skip
        await deliver()
        assert receiver.received[0].verified(hook["secret"])["type"] == "webhook.test"
        again = await w.post(f"/v1/events/{sent.json()['id']}/redeliver", None,
                             headers=w.admin, expect=202)  # fmt: skip
        assert again.json()["deliveries"] == 1
        # A test is its endpoint's alone: redelivered to another, nothing would be sent.
        elsewhere = await w.post(f"/v1/events/{sent.json()['id']}/redeliver",
                                 {"endpoint_id": other["id"]}, headers=w.admin,
                                 expect=422)  # fmt: skip
        assert elsewhere.json()["errors"][0]["field"] == "endpoint_id"
        await deliver()
        assert [r.headers["webhook-id"] for r in receiver.received] == [sent.json()["id"]] * 2
        since = utc_now().isoformat()
        receiver.script = [500] * 20
        await w.loan()
        await deliver()
        receiver.script = []
        recovered = await w.post(f"/v1/webhook-endpoints/{hook['id']}/recover",
                                 {"since": since}, headers=w.admin, expect=202)  # fmt: skip
        assert recovered.json()["deliveries"] == 1
        await deliver()
        assert receiver.received[-1].verified(hook["secret"])["type"] == "loan.created"
        await w.post(f"/v1/webhook-endpoints/{other['id']}/recover", {"since": before_test},
                     headers=w.admin, expect=202)  # fmt: skip
        await deliver()
        assert {r.verified(other["secret"])["type"] for r in bystander.received} == {"loan.created"}
    # Nothing from before an endpoint existed: it never subscribed to it.
    with receiving() as newcomer:
        late = await endpoint(w, newcomer.url)
        recovered = await w.post(f"/v1/webhook-endpoints/{late['id']}/recover",
                                 {"since": before_test}, headers=w.admin, expect=202)  # fmt: skip
        assert recovered.json()["deliveries"] == 0
        await w.loan()
        await deliver()
        assert [r.verified(late["secret"])["type"] for r in newcomer.received] == ["loan.created"]
    # An offset that takes the time off the calendar in UTC is a 422, not a 500.
    for bad in ("0001-01-01T00:00:00+14:00", "not a time", "2026-12-04", "2026-12-04T20:00:00"):
        refused = await w.post(f"/v1/webhook-endpoints/{hook['id']}/recover", {"since": bad},
                               headers=w.admin, expect=422)  # fmt: skip
        assert refused.json()["errors"][0]["field"] == "since"


async def test_recovery_sends_what_the_endpoint_was_subscribed_to_when_written(
    client: httpx.AsyncClient,
) -> None:
    """Recovery matched today's event types: payments written before the endpoint took up
    payment.received were sent by it (a tester's). Each event now goes as the endpoint was
    subscribed when it was written, across a pause while it was disabled."""
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url, ["loan.created"])
        since = utc_now().isoformat()
        loan = await w.loan()
        await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "10.00"}, expect=201)
        await deliver()
        assert [r.verified(hook["secret"])["type"] for r in receiver.received] == ["loan.created"]
        paused = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                    json={"enabled": False,
                                          "event_types": ["loan.created", "payment.received"]},
                                    headers=w.admin)  # fmt: skip
        assert paused.status_code == 200, paused.text
        await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "11.00"}, expect=201)
        await w.loan()  # loan.created: dropped below before the recovery, subscribed when written
        dropped = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                     json={"enabled": True, "event_types": ["payment.received"]},
                                     headers=w.admin)  # fmt: skip
        assert dropped.status_code == 200, dropped.text
        await w.loan()  # loan.created, no longer subscribed
        recovered = await w.post(f"/v1/webhook-endpoints/{hook['id']}/recover",
                                 {"since": since}, headers=w.admin, expect=202)  # fmt: skip
        assert recovered.json()["deliveries"] == 2
        await deliver()
        sent = [r.verified(hook["secret"]) for r in receiver.received[1:]]
        assert sorted((e["type"], e["data"].get("amount")) for e in sent) == [
            ("loan.created", None), ("payment.received", "11.00"),
        ]  # fmt: skip


async def test_a_redelivery_is_accepted_only_where_it_will_be_sent(
    client: httpx.AsyncClient,
) -> None:
    """Redelivery to a named endpoint that is disabled is refused as its test is, and to one
    that does not subscribe to the event's type too, rather than 202 and nothing sent; to
    every endpoint, it goes to the enabled ones."""
    w = await world(client)
    with receiving() as receiver, receiving() as paused_receiver, receiving() as risk_receiver:
        hook = await endpoint(w, receiver.url)
        paused = await endpoint(w, paused_receiver.url)
        risk = await endpoint(w, risk_receiver.url, ["risk.*"])
        await w.loan()
        assert await deliver() == 2
        event_id = (await w.get("/v1/events?type=loan.created", headers=w.admin))["items"][0]["id"]
        redeliver = f"/v1/events/{event_id}/redeliver"
        disable = await client.patch(f"/v1/webhook-endpoints/{paused['id']}",
                                     json={"enabled": False}, headers=w.admin)  # fmt: skip
        assert disable.status_code == 200, disable.text

        tested = await w.post(f"/v1/webhook-endpoints/{paused['id']}/test", None,
                              headers=w.admin, expect=422)  # fmt: skip
        refused = await w.post(redeliver, {"endpoint_id": paused["id"]}, headers=w.admin,
                               expect=422)  # fmt: skip
        assert refused.json()["code"] == tested.json()["code"] == "validation_error"
        assert refused.json()["errors"] == [
            {"field": "enabled", "message": "enable the endpoint before redelivering to it"}
        ]
        unsubscribed = await w.post(redeliver, {"endpoint_id": risk["id"]}, headers=w.admin,
                                    expect=422)  # fmt: skip
        assert unsubscribed.json()["errors"] == [{
            "field": "endpoint_id",
            "message": f"webhook endpoint {risk['id']} does not subscribe to loan.created events",
        }]  # fmt: skip
        # An empty id is a malformed request, not an endpoint that could not be found.
        for blank_id in ("", " "):
            blank = await w.post(redeliver, {"endpoint_id": blank_id}, headers=w.admin,
                                 expect=422)  # fmt: skip
            assert blank.json()["errors"][0]["field"] == "endpoint_id"
        assert await deliver() == 0

        everyone = await w.post(redeliver, None, headers=w.admin, expect=202)
        assert everyone.json() == {"deliveries": 1}
        assert await deliver() == 1
        # Enabled again, the endpoint is owed nothing the redelivery to every endpoint queued.
        enable = await client.patch(f"/v1/webhook-endpoints/{paused['id']}",
                                    json={"enabled": True}, headers=w.admin)  # fmt: skip
        assert enable.status_code == 200, enable.text
        assert await deliver() == 0
        named = await w.post(redeliver, {"endpoint_id": paused["id"]}, headers=w.admin,
                             expect=202)  # fmt: skip
        assert named.json() == {"deliveries": 1}
        assert await deliver() == 1
        assert [len(r.received) for r in (receiver, paused_receiver, risk_receiver)] == [2, 2, 0]
        assert {r.verified(hook["secret"])["type"] for r in receiver.received} == {"loan.created"}
        # Unsubscribed since, an endpoint is sent it no more (it was: a tester's).
        moved = await client.patch(
            f"/v1/webhook-endpoints/{hook['id']}", json={"event_types": ["payment.*"]},
            headers=w.admin,
        )  # fmt: skip
        assert moved.status_code == 200, moved.text
        everyone = await w.post(redeliver, None, headers=w.admin, expect=202)
        assert everyone.json() == {"deliveries": 1}
        assert await deliver() == 1
        assert [len(r.received) for r in (receiver, paused_receiver, risk_receiver)] == [2, 3, 0]


@pytest.mark.parametrize(
    "answer",
    # Hangs past the timeout; or 200 at once, then a byte every 0.2 s: each read comes within
    # the timeout, so only a deadline on the whole attempt ends it (it took minutes and held
    # every other delivery of the embedded default behind it: a tester's).
    [("hang", 1.0), ("trickle", 0.2, 40)],
    ids=["hanging", "trickling"],
)
async def test_a_slow_receiver_times_out_and_is_retried(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, answer: tuple[Any, ...]
) -> None:
    monkeypatch.setattr(get_settings(), "webhook_timeout_seconds", 0.5)
    await dispatcher.clients.close()  # new clients with the short timeout
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [answer]
        hook = await endpoint(w, receiver.url)
        await w.loan()
        await deliver()
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        assert log["items"][0]["attempt_log"][0]["error"] == "timed out"
        assert log["items"][0]["status"] == "pending"
    await dispatcher.clients.close()


async def test_only_the_start_of_a_large_answer_is_read(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [("big", 64 * 1024 * 1024)]
        hook = await endpoint(w, receiver.url)
        await w.loan()
        await deliver()
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        (attempt,) = log["items"][0]["attempt_log"]
        assert (attempt["status_code"], attempt["response_excerpt"]) == (200, "x" * 500)
        await until(lambda: receiver.written)
        assert receiver.written[0] < 64 * 1024 * 1024  # the client hung up


async def test_a_compressed_answer_is_not_unpacked(client: httpx.AsyncClient) -> None:
    """A few hundred bytes of nested gzip unpack to hundreds of megabytes: read whole, they took
    the process's memory and its event loop (a tester's). Identity is asked for, and an answer
    compressed all the same is logged as such."""
    w = await world(client)
    bomb = gzip.compress(gzip.compress(bytes(50 * 1024 * 1024)))
    with receiving() as receiver:
        receiver.script = [("headers", 200, {"content-encoding": "gzip, gzip"}, bomb)]
        hook = await endpoint(w, receiver.url)
        await w.loan()
        await deliver()
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        (attempt,) = log["items"][0]["attempt_log"]
        assert (attempt["status_code"], attempt["response_excerpt"]) == (
            200, "(a gzip, gzip-encoded answer, not read)",
        )  # fmt: skip
        assert receiver.arrived[0].headers["accept-encoding"] == "identity"


async def test_an_answer_with_nul_characters_is_logged(client: httpx.AsyncClient) -> None:
    """PostgreSQL's text holds no NUL: an answer with one failed the attempt log's write."""
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [("headers", 200, {}, b"ok\x00\x00binary")]
        hook = await endpoint(w, receiver.url)
        await w.loan()
        await deliver()
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        (delivery,) = log["items"]
        assert delivery["status"] == "delivered"
        assert delivery["attempt_log"][0]["response_excerpt"] == "ok\ufffd\ufffdbinary"


async def test_a_drain_past_its_budget_hands_back_what_it_has_not_started(
    client: httpx.AsyncClient,
) -> None:
    """A slow endpoint's lane of seven events: the drain sends what its budget allows and
    hands the rest back, due at once, rather than keep every other endpoint's new events
    waiting while it sends the lane to its end (a tester's). The next drains send the rest,
    still in the loan's order."""
    w = await world(client)
    with receiving() as receiver:
        receiver.delay = lambda _: 0.3
        hook = await endpoint_and_a_lane(w, receiver.url, payments=6)
        first = await dispatcher.drain(budget_seconds=0.4)
        assert 1 <= first < 7
        waiting = await pending_due_times()
        assert len(waiting) == 7 - first
        assert all(due <= utc_now() for due in waiting)  # handed back, not left to their lease
        total = first
        for _ in range(20):
            if total == 7:
                break
            total += await dispatcher.drain(budget_seconds=0.4)
        arrived = [r.verified(hook["secret"]) for r in receiver.received]
        assert [p["type"] for p in arrived] == ["loan.created"] + ["payment.received"] * 6
        sequences = [p["data"]["sequence"] for p in arrived]
        assert sequences == sorted(sequences)


async def test_what_a_drain_hands_back_is_claimed_before_the_loans_later_events(
    client: httpx.AsyncClient,
) -> None:
    """A drain hands back a loan's events after a later one of the loan fell due (written
    while the drain held them: here, the drain's clock is ahead). Due again at the hand-back,
    they came after it in the next claim's order, and the later event reached the endpoint
    first (a tester's, at a drain's end beside a hanging endpoint)."""
    w = await world(client)
    with receiving() as receiver:
        receiver.delay = lambda _: 0.3
        hook = await endpoint(w, receiver.url)
        loan = await w.loan()
        for _ in range(3):
            await w.pay(loan["id"], "10.00")
        handed_back_at = utc_now() + timedelta(minutes=5)
        first = await dispatcher.drain(now=handed_back_at, budget_seconds=0.4)
        assert 1 <= first < 4
        await w.pay(loan["id"], "10.00")  # falls due before the hand-back's clock
        claimed = await dispatcher._claim(handed_back_at, 1, ())
        async with session_scope() as session:
            pending = await session.scalars(
                select(WebhookDelivery.event_position).where(WebhookDelivery.status == "pending")
            )
            assert [c.position for c in claimed] == [min(pending)]
        assert await deliver(handed_back_at + dispatcher.LEASE + timedelta(seconds=1)) == 5 - first
        sequences = [r.verified(hook["secret"])["data"]["sequence"] for r in receiver.received]
        assert sequences == sorted(sequences)


async def test_a_dispatcher_killed_mid_batch_loses_nothing(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        for _ in range(5):
            await w.loan()
        now = utc_now()
        claimed = await dispatcher._claim(now, 3, ())  # claimed, then the process died
        assert len(claimed) == 3
        assert await deliver(now) == 2  # the others are leased, not lost
        assert await deliver(now + dispatcher.LEASE + timedelta(seconds=1)) == 3
        assert len({r.verified(hook["secret"])["data"]["loan_id"] for r in receiver.received}) == 5


async def test_a_commit_wakes_the_in_process_dispatcher(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "webhook_sweep_seconds", 60)  # no sweep in this test
    scheduler = InProcessScheduler(
        (Job("dispatch", WebhookDispatcher().run_once, every_seconds=0),)
    )
    w = await world(client)
    with receiving() as receiver:
        await endpoint(w, receiver.url)
        scheduler.start()
        try:
            await w.loan()
            for _ in range(100):
                if receiver.received:
                    break
                await asyncio.sleep(0.05)
            assert len(receiver.received) == 1
        finally:
            await scheduler.stop()


async def test_a_stopping_process_records_the_attempts_it_has_in_flight(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped mid-drain (a deploy's restart), the dispatcher lets the attempts it sent end and
    records them: cancelled, it left them to their lease, and a healthy receiver got each
    twice a minute later (a tester's). What it had claimed and not sent is due at once."""
    monkeypatch.setattr(get_settings(), "webhook_sweep_seconds", 60)
    webhooks = WebhookDispatcher()
    scheduler = InProcessScheduler(
        (Job("dispatch", webhooks.run_once, every_seconds=0, wind_down=webhooks.wind_down),)
    )
    w = await world(client)
    with receiving() as receiver:
        receiver.delay = lambda _: 0.5
        hook = await endpoint_and_a_lane(w, receiver.url, payments=3)
        scheduler.start()
        try:
            await until(lambda: receiver.arrived)
        finally:
            await scheduler.stop()
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        delivered = [d for d in log["items"] if d["status"] == "delivered"]
        assert len(delivered) == len(receiver.received) >= 1
        waiting = await pending_due_times()
        assert len(waiting) == 4 - len(delivered)
        assert all(due <= utc_now() for due in waiting)  # handed back, not left to their lease


async def test_metrics_show_the_backlog(client: httpx.AsyncClient) -> None:
    w = await world(client)
    await endpoint(w, f"http://127.0.0.1:{free_port()}/hooks")
    await w.loan()
    text = (await client.get("/metrics", headers=w.admin)).text
    assert "loanwatch_webhook_backlog 1.0" in text
    assert "loanwatch_http_requests_total" in text
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1


async def test_a_drain_of_several_batches_sends_each_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 2: a batch's results are written while the next one is sent.
    monkeypatch.setattr(get_settings(), "webhook_batch_size", 2)
    w = await world(client)
    with receiving() as receiver:
        receiver.script = [500]
        hook = await endpoint(w, receiver.url)
        loans = [await w.loan() for _ in range(5)]
        now = utc_now()
        assert await deliver(now) == 5
        assert len(receiver.received) == 5
        assert {r.verified(hook["secret"])["data"]["loan_id"] for r in receiver.received} == {
            loan["id"] for loan in loans
        }
        async with session_scope() as session:
            statuses = sorted(
                (d.status, d.attempts) for d in await session.scalars(select(WebhookDelivery))
            )
            attempts = sorted(a.status_code for a in await session.scalars(select(WebhookAttempt)))
        assert statuses == [("delivered", 1)] * 4 + [("pending", 1)]
        assert attempts == [200, 200, 200, 200, 500]
        assert await deliver(now) == 0
        assert await deliver(now + timedelta(seconds=6)) == 1


async def test_a_loans_events_reach_an_endpoint_in_sequence_order(
    client: httpx.AsyncClient,
) -> None:
    """The receiver is slow on the loan's creation, whenever it arrives: the loan's payments,
    sent beside it, arrived first, and a subscriber told to drop updates older than one it
    applied dropped the creation. Another loan's events still go side by side."""
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        loan = await w.loan(principal="900.00", term=3)
        receiver.delay = lambda r: (
            0.5
            if r.json["type"] == "loan.created" and r.json["data"]["loan_id"] == loan["id"]
            else 0
        )
        for _ in range(4):
            await w.pay(loan["id"], "10.00")
        other = await w.loan()
        assert await deliver() == 6
        arrived = [r.verified(hook["secret"]) for r in receiver.received]
        ours = [p for p in arrived if p["data"]["loan_id"] == loan["id"]]
        assert [p["type"] for p in ours] == ["loan.created"] + ["payment.received"] * 4
        sequences = [p["data"]["sequence"] for p in ours]
        assert sequences == sorted(sequences)
        # The other loan's creation did not wait behind the slow one.
        assert arrived[0]["data"]["loan_id"] == other["id"]


async def test_a_borrowers_grade_a_loans_change_moved_comes_after_the_change(
    client: httpx.AsyncClient,
) -> None:
    """A borrower's events (a grade, a limit) have no loan of their own: sent beside the loan's
    events that led to them, they reached a subscriber first (a tester's: a grade fall 7 s
    before the reversal behind it). Moved by one loan's change, they ride its lane: here a
    cancellation, which leaves the borrower no open loan and so grade A."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3)  # fmt: skip
    today = clock.today()
    booked = str(today.replace(day=1) - relativedelta(months=3))
    loan = await w.loan(principal="1200.00", term=6, disbursed_on=booked)
    await w.post("/v1/risk/runs", {"as_of": str(today)}, headers=w.admin, expect=201)
    assert (await w.get(f"/v1/borrowers/{loan['borrower_id']}"))["risk_grade"] == "E"
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        first = "loan.delinquency_changed"  # to cancelled: the first of the change's events
        receiver.delay = lambda r: 0.5 if r.json["type"] == first else 0
        await w.post(f"/v1/loans/{loan['id']}/cancel", {}, expect=200)
        await deliver()
        arrived = [r.verified(hook["secret"]) for r in receiver.received]
    types = [p["type"] for p in arrived]
    assert types[0] == first, types
    assert "risk.grade_changed" in types, types
    sequences = [p["data"]["sequence"] for p in arrived]
    assert sequences == sorted(sequences)


async def test_a_hanging_endpoint_holds_up_neither_others_nor_its_loans_order(
    client: httpx.AsyncClient,
) -> None:
    """A receiver hangs on a loan's creation. A payment of the loan committed meanwhile reaches
    another endpoint at once, not when the hanging attempt ends (a drain sent batch after
    batch, each waiting for its slowest attempt: up to the 10 s timeout), and waits behind
    the creation in the hanging endpoint's lane rather than overtake it."""
    w = await world(client)
    with receiving() as stuck, receiving() as healthy:
        stuck.gate.clear()
        stuck_hook = await endpoint(w, stuck.url)
        healthy_hook = await endpoint(w, healthy.url)
        loan = await w.loan()
        in_flight = asyncio.create_task(deliver())
        try:
            await until(lambda: stuck.arrived and healthy.received)
            await w.pay(loan["id"], "10.00")
            await until(lambda: len(healthy.received) == 2)
            # The payment's delivery to the hanging endpoint was claimed with this one: time
            # to overtake the creation, had it been sent beside it.
            await asyncio.sleep(0.3)
            assert len(stuck.arrived) == 1
            assert not in_flight.done()
        finally:
            stuck.gate.set()
            sent = await in_flight
        assert sent == 4
    for receiver, hook in ((healthy, healthy_hook), (stuck, stuck_hook)):
        arrived = [r.verified(hook["secret"]) for r in receiver.arrived]
        assert [p["type"] for p in arrived] == ["loan.created", "payment.received"]
        assert arrived[0]["data"]["sequence"] < arrived[1]["data"]["sequence"]
    async with session_scope() as session:
        deliveries = [
            (d.status, d.attempts) for d in await session.scalars(select(WebhookDelivery))
        ]
    assert deliveries == [("delivered", 1)] * 4


async def test_a_delivery_that_waited_out_its_lease_is_left_to_the_next_claim(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payment waits in its loan's lane behind a slow creation until less of its lease is
    left than an attempt may take: sent then, another dispatcher could claim it and send it
    beside. It is left unsent, to be claimed again when the lease ends, still after the
    creation."""
    monkeypatch.setattr(dispatcher, "LEASE", timedelta(seconds=1.5))
    monkeypatch.setattr(get_settings(), "webhook_timeout_seconds", 1.0)
    await dispatcher.clients.close()  # new clients with the short timeout
    w = await world(client)
    with receiving() as receiver:
        receiver.delay = lambda r: 0.7 if r.json["type"] == "loan.created" else 0
        hook = await endpoint(w, receiver.url)
        loan = await w.loan()
        await w.pay(loan["id"], "10.00")
        assert await deliver() == 1
        assert [r.json["type"] for r in receiver.received] == ["loan.created"]
        async with session_scope() as session:
            attempts = sorted(d.attempts for d in await session.scalars(select(WebhookDelivery)))
        assert attempts == [0, 1]
        assert await deliver(utc_now() + timedelta(seconds=2)) == 1
        arrived = [r.verified(hook["secret"]) for r in receiver.received]
        assert [p["type"] for p in arrived] == ["loan.created", "payment.received"]
    await dispatcher.clients.close()


async def test_dispatch_due_sends_one_batch(client: httpx.AsyncClient) -> None:
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        loans = [await w.loan() for _ in range(3)]
        assert [await dispatcher.dispatch_due(limit=2) for _ in range(3)] == [2, 1, 0]
        assert {r.verified(hook["secret"])["data"]["loan_id"] for r in receiver.received} == {
            loan["id"] for loan in loans
        }


async def test_the_target_is_checked_again_at_delivery(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)  # allowed while loopback is allowed
        await w.loan()
        monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", False)
        assert await deliver() == 1
        assert receiver.received == []
        log = await w.get(f"/v1/webhook-endpoints/{hook['id']}/deliveries", headers=w.admin)
        (delivery,) = log["items"]
        assert delivery["status"] == "pending"
        (attempt,) = delivery["attempt_log"]
        assert attempt["status_code"] is None
        assert attempt["error"] == (
            "target not allowed: 127.0.0.1 resolves to a non-public address (127.0.0.1)"
        )


async def test_an_endpoint_patch_takes_booleans_and_no_nulls(client: httpx.AsyncClient) -> None:
    w = await world(client)
    hook = await endpoint(w, "http://127.0.0.1:9/hook", ["loan.*"])
    path = f"/v1/webhook-endpoints/{hook['id']}"
    for body, field in (({"enabled": "no"}, "enabled"), ({"enabled": 1}, "enabled"),
                        ({"enabled": None}, "enabled"), ({"event_types": None}, "event_types"),
                        ({"url": None}, "url")):  # fmt: skip
        refused = await client.patch(path, json=body, headers=w.admin)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["errors"][0]["field"] == field
    got = await w.get(path, headers=w.admin)
    assert (got["enabled"], got["event_types"], got["url"]) == (
        True, ["loan.*"], "http://127.0.0.1:9/hook",
    )  # fmt: skip
    cleared = await client.patch(path, json={"description": None}, headers=w.admin)
    assert (cleared.status_code, cleared.json()["description"]) == (200, None)
    # A PATCH that changes nothing changes nothing, its ETag neither (a tester's).
    for unchanged in ({}, {"enabled": True, "event_types": ["loan.*"]}):
        same = await client.patch(path, json=unchanged, headers=w.admin)
        assert same.json()["updated_at"] == cleared.json()["updated_at"]


async def test_a_url_needs_a_valid_host_name_and_is_told_its_scheme_first(
    client: httpx.AsyncClient,
) -> None:
    """A host with a space was registered, and its deliveries retried for days; "ftp://x" was
    told it needs 8 characters when what it needs is http(s)."""
    w = await world(client)
    host = "has an invalid host name"
    control = "must not contain control characters such as tabs or newlines"
    spaces = "must not contain spaces or invisible characters (a space in a path is written %20)"
    for url, message in (("http://exa mple.com/", host), ("http://exa%20mple.test/h", host),
                         ("http://-edge.test/h", host), ("http://edge-.test/h", host),
                         ("http://a!b.test/h", host), ("http://ex\tample.test/h", control),
                         ("http://hooks.test/a\nb", control),
                         # IPvFuture literals and a C1 control (a tester's)
                         ("http://[v1.x]/", host), ("http://[v7.127.0.0.1]/h", host),
                         ("http://hooks.test/\u0085x", control),
                         # a zone is IPv6's alone (a tester's)
                         ("http://127.0.0.1%09/", host),
                         ("http://10.0.0.1%25eth0/h", host),
                         # numbers that are no IPv4 address, and spaces (a tester's)
                         ("https://999.1.1.1/", host), ("http://192.168.1.1./h", host),
                         ("https://hooks.test/x ", spaces),
                         ("https://hooks.test/a b", spaces),
                         ("https://hooks.test/zw\u200b", spaces),
                         ("https://hooks.test/x\ufeff", spaces),
                         ("http://0x7f.0x1/x", host), ("http://0x7f000001/x", host),
                         ("http://example.0x1/x", host), ("http://127.1/x", host)):  # fmt: skip
        refused = await w.post("/v1/webhook-endpoints", {"url": url}, headers=w.admin)
        assert (refused.status_code, refused.json()["code"]) == (422, "webhook_url_not_allowed")
        assert refused.json()["errors"] == [{"field": "url", "message": message}], url
    for url in ("https://xn--9ca.test/h", "https://\u00e9.test/h", "https://hooks_1.a-b.test./h",
                "http://[::1]:8080/h", "http://10.0.0.1/h",
                "http://[fe80::1%25eth0]/h"):  # fmt: skip
        await w.post("/v1/webhook-endpoints", {"url": url}, headers=w.admin, expect=201)
    hook = await endpoint(w, "https://hooks.test/h")
    scheme = "must start with http:// or https://"
    for url in ("ftp://x", "ftp://example.com/hook", "", "HTTP\u017f://hooks.test/h"):
        for sent in (w.post("/v1/webhook-endpoints", {"url": url}, headers=w.admin),
                     client.patch(f"/v1/webhook-endpoints/{hook['id']}", json={"url": url},
                                  headers=w.admin)):  # fmt: skip
            refused = await sent
            assert refused.status_code == 422, url
            assert [(e["field"], e["message"]) for e in refused.json()["errors"]] == [
                ("url", scheme)
            ], url
    patched = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                 json={"url": "http://exa mple.com/"}, headers=w.admin)  # fmt: skip
    assert (patched.status_code, patched.json()["code"]) == (422, "webhook_url_not_allowed")
    assert (await w.get(f"/v1/webhook-endpoints/{hook['id']}", headers=w.admin))["url"] == (
        "https://hooks.test/h"
    )


async def test_a_scheme_in_capitals_is_taken_and_stored_in_lower_case(
    client: httpx.AsyncClient,
) -> None:
    """A scheme is case-insensitive (RFC 3986); "HTTPS://" was refused 422 (a tester's)."""
    w = await world(client)
    created = await w.post("/v1/webhook-endpoints", {"url": "HTTPS://Hooks.test/A"},
                           headers=w.admin, expect=201)  # fmt: skip
    hook = created.json()
    assert hook["url"] == "https://Hooks.test/A"
    patched = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                 json={"url": "Http://hooks.test/B"}, headers=w.admin)  # fmt: skip
    assert (patched.status_code, patched.json()["url"]) == (200, "http://hooks.test/B")
    document = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert document["EndpointCreate"]["properties"]["url"]["pattern"] == "^[Hh][Tt][Tt][Pp][Ss]?://"


async def test_the_actions_without_fields_refuse_unknown_ones(client: httpx.AsyncClient) -> None:
    """`/test` and `/rotate-secret` take no fields: {"x": 1} was accepted (and acted on) where
    every other body refuses a field it does not know."""
    w = await world(client)
    hook = await endpoint(w, "https://hooks.test/h")
    for action in ("test", "rotate-secret"):
        path = f"/v1/webhook-endpoints/{hook['id']}/{action}"
        refused = await w.post(path, {"x": 1}, headers=w.admin, expect=422)
        assert refused.json()["code"] == "validation_error"
        assert [(e["field"], e["type"]) for e in refused.json()["errors"]] == [
            ("x", "extra_forbidden")
        ]
        assert (await w.post(path, {"x": 1})).status_code == 403  # the caller first
    got = await w.get(f"/v1/webhook-endpoints/{hook['id']}", headers=w.admin)
    assert got["previous_secret_expires_at"] is None  # not rotated
    events = await w.get("/v1/events?type=webhook.test", headers=w.admin)
    assert events["items"] == []  # no test sent
    # No body, an empty one and null all still do.
    json = {**w.admin, "content-type": "application/json"}
    for body in (b"", b"{}", b"null"):
        for action, status in (("test", 202), ("rotate-secret", 200)):
            done = await client.post(f"/v1/webhook-endpoints/{hook['id']}/{action}",
                                     content=body, headers=json if body else w.admin)  # fmt: skip
            assert done.status_code == status, (action, body, done.text)


@pytest.mark.parametrize("hanging", [1, 2])
async def test_hanging_endpoints_with_many_loans_leave_senders_for_the_others(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, hanging: int
) -> None:
    """More loans' lanes to hanging endpoints than the drain has senders: they took every
    sender, and a healthy endpoint's deliveries waited behind the timeouts, up to their lease
    (60 s, a tester's with 150 loans; then with two hanging endpoints, each taking half).
    Each endpoint gets a share, one share kept back for an endpoint with none."""
    monkeypatch.setattr(dispatcher, "IN_FLIGHT", 4)
    w = await world(client)
    with receiving() as stuck, receiving() as healthy:
        stuck.gate.clear()
        for n in range(hanging):
            await endpoint(w, f"{stuck.url}{n}")
        await endpoint(w, healthy.url)
        for _ in range(6):
            await w.loan()
        in_flight = asyncio.create_task(deliver())
        try:
            await until(lambda: len(healthy.received) == 6, seconds=3)
        finally:
            stuck.gate.set()
            sent = await in_flight
        assert sent == 6 * (hanging + 1)
    assert len(stuck.received) == 6 * hanging


async def test_what_a_hanging_endpoint_holds_does_not_stop_the_claims(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain claims a batch while it holds less than one: a hanging endpoint's deliveries
    waiting for a sender filled it, and a healthy endpoint's new events were not claimed until
    the timeouts ended (600 loans: up to 9 s, in waves). Once the slow endpoint has every
    sender it may have, its waiting deliveries go back and the claims leave it out."""
    monkeypatch.setattr(get_settings(), "webhook_batch_size", 4)
    monkeypatch.setattr(dispatcher, "SLOW_SECONDS", 0.2, raising=False)
    w = await world(client)
    with receiving() as stuck, receiving() as healthy:
        stuck.gate.clear()
        await endpoint(w, stuck.url)
        for _ in range(8):
            await w.loan()
        await endpoint(w, healthy.url)  # after the stuck endpoint's backlog
        for _ in range(4):
            await w.loan()
        in_flight = asyncio.create_task(deliver())
        try:
            await until(lambda: len(healthy.received) == 4, seconds=3)
        finally:
            stuck.gate.set()
            sent = await in_flight
        assert sent == 16
    assert len(stuck.received) == 12


async def test_an_endpoint_enabled_again_leaves_a_delivery_in_flight_to_its_attempt(
    client: httpx.AsyncClient,
) -> None:
    """Enabling makes the endpoint's waiting deliveries due at once; one being sent was made
    due too, and another dispatcher claimed and sent it beside the first attempt (a tester's:
    each event twice, two attempts logged under `attempts: 1`)."""
    w = await world(client)
    with receiving() as receiver:
        receiver.gate.clear()
        hook = await endpoint(w, receiver.url)
        await w.loan()
        first = asyncio.create_task(deliver())
        try:
            await until(lambda: receiver.arrived)
            path = f"/v1/webhook-endpoints/{hook['id']}"
            for enabled in (False, True):
                toggled = await client.patch(path, json={"enabled": enabled}, headers=w.admin)
                assert toggled.status_code == 200, toggled.text
            second = asyncio.create_task(dispatcher.dispatch_due())
            await asyncio.sleep(0.3)
            assert len(receiver.arrived) == 1
        finally:
            receiver.gate.set()
            sent = await first + await second
        assert sent == 1
    async with session_scope() as session:
        (delivery,) = await session.scalars(select(WebhookDelivery))
        attempts = await session.scalar(select(func.count()).select_from(WebhookAttempt))
    assert (delivery.status, delivery.attempts, attempts) == ("delivered", 1, 1)


async def test_a_redelivery_of_a_delivery_being_sent_counts_no_second_send(
    client: httpx.AsyncClient,
) -> None:
    """Its attempt in flight is the redelivery: the answer said one delivery would be sent,
    and none more was (a re-verifier's)."""
    w = await world(client)
    with receiving() as receiver:
        receiver.gate.clear()
        hook = await endpoint(w, receiver.url)
        await w.loan()
        (event,) = (await w.get("/v1/events?type=loan.created", headers=w.admin))["items"]
        in_flight = asyncio.create_task(deliver())
        try:
            await until(lambda: receiver.arrived)
            again = await w.post(f"/v1/events/{event['id']}/redeliver",
                                 {"endpoint_id": hook["id"]}, headers=w.admin)  # fmt: skip
            assert again.status_code == 202, again.text
            assert again.json()["deliveries"] == 0
        finally:
            receiver.gate.set()
            await in_flight
        assert await deliver() == 0
        assert len(receiver.arrived) == 1


@pytest.mark.parametrize("first_answer", [0.0, 0.3])
async def test_past_its_budget_a_drain_waiting_on_a_slow_attempt_still_sends_the_others(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, first_answer: float
) -> None:
    """A drain past its budget ended with its attempts in flight, claiming nothing: on the
    embedded default, one drain at a time, a healthy endpoint's new events waited out a
    hanging attempt's timeout every 20 s (a re-verifier's). And a healthy endpoint whose one
    answer took a second (``first_answer``, past SLOW_SECONDS) counted as slow for 30 s and
    was left out with the hanging one: on Celery its new events waited out the hanging
    attempt's timeout at the end of every drain (a tester's, p90 10 s)."""
    monkeypatch.setattr(dispatcher, "SLOW_SECONDS", 0.2)
    w = await world(client)
    with receiving() as stuck, receiving() as healthy:
        stuck.gate.clear()
        healthy.delay = lambda _: first_answer if len(healthy.arrived) == 1 else 0.0
        await endpoint(w, stuck.url)
        await endpoint(w, healthy.url)
        await w.loan()
        in_flight = asyncio.create_task(dispatcher.drain(budget_seconds=0.5))
        try:
            await until(lambda: stuck.arrived and healthy.received)
            await asyncio.sleep(0.7)  # past the budget, the stuck attempt slow
            await w.loan()
            await until(lambda: len(healthy.received) == 2, seconds=3)
            assert not in_flight.done()
        finally:
            stuck.gate.set()
            await in_flight


async def test_past_its_budget_a_drain_starts_no_attempt_more_to_a_hanging_endpoint(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hanging endpoint's lane went on after each timeout: the drain, waiting out each new
    attempt, ended a timeout later each time and claimed nothing meanwhile (a tester's: a
    retry and a re-enabled endpoint's deliveries waited for the next drain)."""
    monkeypatch.setattr(dispatcher, "SLOW_SECONDS", 0.2)
    monkeypatch.setattr(get_settings(), "webhook_timeout_seconds", 1.0)
    w = await world(client)
    with receiving() as stuck:
        stuck.gate.clear()
        await endpoint(w, stuck.url)
        loan = await w.loan()
        await w.pay(loan["id"], "10.00")  # a lane of several events of one loan
        try:
            sent = await dispatcher.drain(budget_seconds=0.3)
        finally:
            stuck.gate.set()
    assert (sent, len(stuck.arrived)) == (1, 1)
    async with session_scope() as session:
        due = await session.scalar(
            select(func.count()).where(WebhookDelivery.status == "pending",
                                       WebhookDelivery.next_attempt_at <= utc_now())
        )  # fmt: skip
    assert due == 1  # the rest of the lane (its payment), handed back: due at once


async def test_a_resend_by_hand_starts_the_retry_schedule_afresh(
    client: httpx.AsyncClient,
) -> None:
    """A redelivery or a recovery is a new round of retries, not one more attempt of the spent
    round: a dozen redeliveries to a receiver still down used up four days of schedule in
    seconds, and a recovery gave a failed delivery one attempt, failed again at once, nothing
    sent when the receiver came back (a tester's)."""
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        log = f"/v1/webhook-endpoints/{hook['id']}/deliveries"
        receiver.script = [500] * 100
        since = utc_now().isoformat()
        await w.loan()
        at = utc_now()
        for delay in (timedelta(0), *retry.BACKOFF):  # the whole schedule, each when due
            at += delay * 1.1 + timedelta(seconds=1)
            assert await deliver(at) == 1
        (spent,) = (await w.get(log, headers=w.admin))["items"]
        assert (spent["status"], spent["attempts"]) == ("failed", retry.MAX_ATTEMPTS)
        recovered = await w.post(f"/v1/webhook-endpoints/{hook['id']}/recover", {"since": since},
                                 headers=w.admin, expect=202)  # fmt: skip
        assert recovered.json() == {"deliveries": 1}
        assert await deliver() == 1
        (retrying,) = (await w.get(log, headers=w.admin))["items"]
        assert (retrying["status"], retrying["attempts"]) == ("pending", 1)
        redeliver = f"/v1/events/{spent['event_id']}/redeliver"
        for _ in range(12):
            await w.post(redeliver, {"endpoint_id": hook["id"]}, headers=w.admin, expect=202)
            assert await deliver() == 1
        (resent,) = (await w.get(log, headers=w.admin))["items"]
        assert (resent["status"], resent["attempts"]) == ("pending", 1)
        assert len(resent["attempt_log"]) == retry.MAX_ATTEMPTS + 13  # the log keeps them all
        receiver.script = []  # back up: the next retry of the round delivers it
        assert await deliver(utc_now() + retry.BACKOFF[0] * 1.1) == 1
        (delivered,) = (await w.get(log, headers=w.admin))["items"]
        assert (delivered["status"], delivered["attempts"]) == ("delivered", 2)


async def test_an_endpoint_enabled_again_is_sent_a_loans_events_in_order(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deliveries already overdue kept their earlier due time when the endpoint was enabled
    again, and went before a delivery made due then: a loan's payments before its creation,
    in an earlier batch (a tester's, batches of 500 from a backlog of 2,000)."""
    monkeypatch.setattr(get_settings(), "webhook_batch_size", 1)
    w = await world(client)
    with receiving() as receiver:
        hook = await endpoint(w, receiver.url)
        receiver.script = [500]
        loan = await w.loan()
        assert await deliver() == 1  # loan.created failed: retried in 5 s
        for _ in range(2):
            await w.pay(loan["id"], "10.00")  # due at once
        for enabled in (False, True):
            patched = await client.patch(f"/v1/webhook-endpoints/{hook['id']}",
                                         json={"enabled": enabled}, headers=w.admin)  # fmt: skip
            assert patched.status_code == 200, patched.text
        assert await deliver() == 3
        sequences = [r.verified(hook["secret"])["data"]["sequence"] for r in receiver.received]
        assert sequences[1:] == sorted(sequences[1:]), sequences
