"""A request whose transaction loses a race in the database (here: a lock not granted in time)
is rolled back whole and answered 503 `service_busy`, never 500, and its Idempotency-Key is
free for the retry (docs/architecture.md, "The request path"); one whose connection is lost,
503 `database_unavailable`."""

import asyncio

import asyncpg
import httpx
import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request

from app.config import get_settings
from app.db import database
from app.errors import database_trouble
from tests.conftest import TEST_DSN
from tests.factories import world


async def test_a_payment_that_cannot_get_its_loans_lock_is_503_and_its_retry_succeeds(
    client: httpx.AsyncClient, impatient_database: None
) -> None:
    w = await world(client)
    loan = await w.loan()
    payments = f"/v1/loans/{loan['id']}/payments"
    body = {"amount": "100.00", "external_ref": "till-7"}
    headers = {**w.merchant, "Idempotency-Key": "pay-once"}
    holder = await asyncpg.connect(TEST_DSN)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM loan WHERE id = $1 FOR UPDATE", loan["id"])
            busy = await client.post(payments, json=body, headers=headers)
    finally:
        await holder.close()
    assert busy.status_code == 503, busy.text
    assert busy.headers["content-type"] == "application/problem+json"
    assert busy.json()["code"] == "service_busy"
    assert busy.headers["retry-after"] == "1"
    ledger = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [t["kind"] for t in ledger] == ["disbursement"]

    retried = await client.post(payments, json=body, headers=headers)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert (await w.get(f"/v1/loans/{loan['id']}"))["balances"]["principal_outstanding"] != (
        loan["balances"]["principal_outstanding"]
    )


async def test_a_key_whose_claim_cannot_be_written_is_busy_not_lost(
    client: httpx.AsyncClient, impatient_database: None
) -> None:
    """The Idempotency-Key's claim waited out a lock (on SQLite: another process holding the
    file): nothing ran, so 503 service_busy, not database_unavailable's "the request may have
    been applied" (a tester's); the retry runs."""
    w = await world(client)
    loan = await w.loan()
    payments = f"/v1/loans/{loan['id']}/payments"
    headers = {**w.merchant, "Idempotency-Key": "claim-while-busy"}
    holder = await asyncpg.connect(TEST_DSN)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE idempotency_record IN ACCESS EXCLUSIVE MODE")
            busy = await client.post(payments, json={"amount": "10.00"}, headers=headers)
    finally:
        await holder.close()
    assert busy.status_code == 503, busy.text
    assert (busy.json()["code"], busy.headers["retry-after"]) == ("service_busy", "1")
    retried = await client.post(payments, json={"amount": "10.00"}, headers=headers)
    assert retried.status_code == 201, retried.text
    ledger = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [t["kind"] for t in ledger].count("payment") == 1


async def test_a_request_whose_database_connection_is_lost_is_503(
    client: httpx.AsyncClient,
) -> None:
    """The database ends the session of a payment waiting for its loan's lock (an operator's
    pg_terminate_backend, a failover): 503 database_unavailable with Retry-After, not a 500
    (a tester's), and the retry with the same key runs, the first having stored nothing."""
    w = await world(client)
    loan = await w.loan()
    payments = f"/v1/loans/{loan['id']}/payments"
    body = {"amount": "100.00"}
    headers = {**w.merchant, "Idempotency-Key": "pay-through-a-failover"}
    holder = await asyncpg.connect(TEST_DSN)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM loan WHERE id = $1 FOR UPDATE", loan["id"])
            paying = asyncio.create_task(client.post(payments, json=body, headers=headers))
            for _ in range(500):  # until the payment waits for the lock
                waiting = await holder.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            for row in waiting:
                await holder.execute("SELECT pg_terminate_backend($1)", row["pid"])
            lost = await paying
    finally:
        await holder.close()
    assert lost.status_code == 503, lost.text
    assert (lost.json()["code"], lost.headers["retry-after"]) == ("database_unavailable", "5")
    retried = await client.post(payments, json=body, headers=headers)
    assert retried.status_code == 201, retried.text
    ledger = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [t["kind"] for t in ledger] == ["disbursement", "payment"]


async def test_a_database_that_refuses_connections_is_503_on_every_route(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens where the database was (a failover in progress): a read straight from
    the driver, a payment with an Idempotency-Key (its claim) and one without were each a 500
    (a re-verifier's). Each is answered by the app's handlers, not by the server's last
    resort, which closes the client's connection after answering (this client raises what
    reaches it)."""
    w = await world(client)
    loan = await w.loan()
    monkeypatch.setattr(
        get_settings(), "database_url", "postgresql+asyncpg://postgres@127.0.0.1:9/gone"
    )
    await database.dispose()
    try:
        pay = {"amount": "1.00"}
        for response in (
            await client.get(f"/v1/loans/{loan['id']}", headers=w.merchant),
            await client.get(f"/v1/loans/{loan['id']}/schedule", headers=w.merchant),
            await client.post(f"/v1/loans/{loan['id']}/payments", json=pay,
                              headers={**w.merchant, "Idempotency-Key": "k"}),
            await client.post(f"/v1/loans/{loan['id']}/payments", json=pay, headers=w.merchant),
        ):  # fmt: skip
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "database_unavailable"
            assert response.headers["retry-after"] == "5"
            # A read is retried as it is: a key to retry it with means nothing (a tester's).
            keyed = "Idempotency-Key" in response.json()["detail"]
            assert keyed == (response.request.method == "POST"), response.text
    finally:
        monkeypatch.undo()
        await database.dispose()
    assert (await w.get(f"/v1/loans/{loan['id']}"))["balances"] == loan["balances"]


def test_a_request_that_waited_out_the_pool_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """As the lost races are: a burst on SQLite's one connection answered 503 with only the
    access lines to tell (a tester's)."""
    request = Request({"type": "http", "method": "DELETE", "path": "/v1/webhook-endpoints/we_1",
                       "headers": [], "query_string": b""})  # fmt: skip
    with caplog.at_level("WARNING"):
        answer = database_trouble(request, PoolTimeout("QueuePool limit reached"))
    assert answer is not None
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "5")
    assert "DELETE /v1/webhook-endpoints/we_1 waited out the connection pool" in caplog.text
