"""Idempotency-Key: replay, reuse with another body, concurrency, scoping to the API key."""

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select, update

from app.api.auth import hash_key
from app.api.idempotency import IdempotencyRecord
from app.api_keys.models import Role
from app.config import get_settings
from app.db import session_scope, utc_now
from app.events.models import Event
from app.loans.models import Loan
from app.payments.models import Payment
from tests.conftest import TEST_DSN
from tests.factories import World, api_key, auth, world


async def count(model: type) -> int:
    async with session_scope() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def payments_of_a_loan(client: httpx.AsyncClient) -> tuple[World, str]:
    """A world with a loan of 500.00 from 2026-01-10, and the path its payments are posted to."""
    w = await world(client)
    loan = await w.loan(principal="500.00", disbursed_on="2026-01-10")
    return w, f"/v1/loans/{loan['id']}/payments"


async def test_same_key_same_body_replays_the_stored_response(client: httpx.AsyncClient) -> None:
    w = await world(client)
    borrower = await w.borrower()
    body = {"borrower_id": borrower["id"], "product_code": w.product_code, "principal": "500.00",
            "term": 12, "merchant_order_ref": "ORD-9"}  # fmt: skip
    headers = {**w.merchant, "Idempotency-Key": "checkout-9"}
    first = await client.post("/v1/loans", json=body, headers=headers)
    second = await client.post("/v1/loans", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.json() == first.json()
    assert await count(Loan) == 1
    assert await count(Event) == 1


async def test_key_order_and_whitespace_do_not_make_another_request(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    headers = {**w.admin, "Idempotency-Key": "m-1", "content-type": "application/json"}
    first = await client.post("/v1/merchants", content=b'{"name": "Acme"}', headers=headers)
    second = await client.post("/v1/merchants", content=b'{ "name":"Acme" }', headers=headers)
    assert second.headers.get("idempotent-replayed") == "true"
    assert first.json()["id"] == second.json()["id"]


async def test_same_key_different_body_is_422(client: httpx.AsyncClient) -> None:
    w, path = await payments_of_a_loan(client)
    headers = {**w.merchant, "Idempotency-Key": "pay-1"}
    ok = await client.post(path, json={"amount": "10.00", "received_on": "2026-01-20"},
                           headers=headers)  # fmt: skip
    assert ok.status_code == 201
    reused = await client.post(path, json={"amount": "11.00", "received_on": "2026-01-20"},
                               headers=headers)  # fmt: skip
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert await count(Payment) == 1


async def test_a_malformed_request_corrected_runs_under_its_key(
    client: httpx.AsyncClient,
) -> None:
    """A request refused for its shape did nothing: its answer is not kept, so the corrected
    request runs under the same key (it was refused as the key's reuse: a tester's). A
    refusal that looked at the book (over the limit, say) is kept and replayed."""
    w, path = await payments_of_a_loan(client)
    headers = {**w.merchant, "Idempotency-Key": "pay-fixed"}
    malformed = await client.post(path, json={"amount": "1.5", "received_on": "2026-01-20"},
                                  headers=headers)  # fmt: skip
    assert (malformed.status_code, malformed.json()["code"]) == (422, "validation_error")
    again = await client.post(path, json={"amount": "1.5", "received_on": "2026-01-20"},
                              headers=headers)  # fmt: skip
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (422, None)
    fixed = await client.post(path, json={"amount": "1.50", "received_on": "2026-01-20"},
                              headers=headers)  # fmt: skip
    assert fixed.status_code == 201, fixed.text
    assert await count(Payment) == 1
    too_much = {"amount": "9000.00", "received_on": "2026-01-20"}
    headers = {**w.merchant, "Idempotency-Key": "pay-too-much"}
    refused = await client.post(path, json=too_much, headers=headers)
    assert (refused.status_code, refused.json()["code"]) == (422, "amount_exceeds_payoff")
    replayed = await client.post(path, json=too_much, headers=headers)
    assert replayed.headers.get("idempotent-replayed") == "true"


async def test_another_body_while_the_first_runs_is_told_to_wait(
    client: httpx.AsyncClient,
) -> None:
    """The first request may yet be refused for its shape, which keeps no answer: while it
    runs, another body under its key is told to retry (409), not that the key is used up (a
    re-verifier's, a malformed request and its correction sent together)."""
    w = await world(client)
    secret = w.admin["Authorization"].removeprefix("Bearer ")
    now = utc_now()
    async with session_scope() as session:
        session.add(IdempotencyRecord(scope=hash_key(secret), key="m-held", fingerprint="0" * 64,
                                      created_at=now, locked_until=now + timedelta(seconds=60),
                                      claim="held"))  # fmt: skip
    headers = {**w.admin, "Idempotency-Key": "m-held"}
    waiting = await client.post("/v1/merchants", json={"name": "Acme"}, headers=headers)
    assert (waiting.status_code, waiting.json()["code"]) == (409, "idempotency_request_in_progress")
    async with session_scope() as session:  # its holder died unanswered: the key is its
        await session.execute(update(IdempotencyRecord).values(locked_until=now))
    reused = await client.post("/v1/merchants", json={"name": "Acme"}, headers=headers)
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")


async def test_keys_are_scoped_to_the_api_key(client: httpx.AsyncClient) -> None:
    w = await world(client)
    other_admin = auth(await api_key(Role.ADMIN))
    a = await client.post("/v1/merchants", json={"name": "A"},
                          headers={**w.admin, "Idempotency-Key": "same"})  # fmt: skip
    b = await client.post("/v1/merchants", json={"name": "A"},
                          headers={**other_admin, "Idempotency-Key": "same"})  # fmt: skip
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers


async def test_errors_are_replayed_too(client: httpx.AsyncClient) -> None:
    w = await world(client)
    headers = {**w.merchant, "Idempotency-Key": "bad-1"}
    body = {"borrower_id": "bor_missing", "product_code": w.product_code, "principal": "1.00",
            "term": 12, "merchant_order_ref": "x"}  # fmt: skip
    first = await client.post("/v1/loans", json=body, headers=headers)
    second = await client.post("/v1/loans", json=body, headers=headers)
    assert first.status_code == second.status_code == 404
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "wrong_path",
    ["/v1/loans/", "/v1/loan", "/v1/loans/schedule"],  # a slash, a typo, a GET-only path
)
async def test_a_path_no_route_answers_leaves_the_key_free(
    client: httpx.AsyncClient, wrong_path: str
) -> None:
    """The routing's 404 or 405 is no answer to the request the key is for: stored, it
    refused the corrected request as a reuse of the key (a tester's: a POS posting to
    /v1/loans/ could never originate with that key). No redirect either: the 307 to the other
    form was answered before authentication, to an absolute http:// URL."""
    w = await world(client)
    borrower = await w.borrower()
    body = {"borrower_id": borrower["id"], "product_code": w.product_code, "principal": "500.00",
            "term": 12, "merchant_order_ref": "ORD-10"}  # fmt: skip
    headers = {**w.merchant, "Idempotency-Key": "checkout-10"}
    wrong = await client.post(wrong_path, json=body, headers=headers)
    assert wrong.status_code in (404, 405), wrong.text
    assert wrong.headers["content-type"] == "application/problem+json"
    assert "location" not in wrong.headers
    right = await client.post("/v1/loans", json=body, headers=headers)
    assert right.status_code == 201, right.text
    assert await count(Loan) == 1


async def test_concurrent_requests_with_one_key_run_once(client: httpx.AsyncClient) -> None:
    w = await world(client)
    borrower = await w.borrower()
    body = {"borrower_id": borrower["id"], "product_code": w.product_code, "principal": "500.00",
            "term": 12, "merchant_order_ref": "ORD-race"}  # fmt: skip
    headers = {**w.merchant, "Idempotency-Key": "race"}
    responses = await asyncio.gather(
        *[client.post("/v1/loans", json=body, headers=headers) for _ in range(8)]
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    for r in responses:
        if r.status_code == 409:
            assert r.json()["code"] == "idempotency_request_in_progress"
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["id"] for r in created}) == 1
    assert await count(Loan) == 1
    assert await count(Event) == 1


async def test_secret_is_not_kept_for_replays(client: httpx.AsyncClient) -> None:
    w = await world(client)
    headers = {**w.admin, "Idempotency-Key": "key-1"}
    first = await client.post("/v1/api-keys", json={"role": "dashboard"}, headers=headers)
    second = await client.post("/v1/api-keys", json={"role": "dashboard"}, headers=headers)
    assert first.json()["key"].startswith("lw_")
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["key"] is None


async def test_overlong_key_is_422(client: httpx.AsyncClient) -> None:
    w = await world(client)
    response = await client.post("/v1/merchants", json={"name": "A"},
                                 headers={**w.admin, "Idempotency-Key": "k" * 300})  # fmt: skip
    assert response.status_code == 422


async def test_a_revoked_key_gets_401_not_its_stored_answers(client: httpx.AsyncClient) -> None:
    w = await world(client)
    created = await client.post(
        "/v1/api-keys", json={"role": "merchant", "merchant_id": w.merchant_id}, headers=w.admin
    )
    pos = {"Authorization": f"Bearer {created.json()['key']}", "Idempotency-Key": "b-1"}
    body = {"external_id": "c-1", "name": "Li Lei", "phone": "+8613800138000"}
    assert (await client.post("/v1/borrowers", json=body, headers=pos)).status_code == 201
    revoked = await client.delete(f"/v1/api-keys/{created.json()['id']}", headers=w.admin)
    assert revoked.status_code == 204
    replay = await client.post("/v1/borrowers", json=body, headers=pos)
    assert replay.status_code == 401, replay.text
    assert "idempotent-replayed" not in replay.headers
    other = await client.post("/v1/borrowers", json={**body, "name": "Han"}, headers=pos)
    assert other.status_code == 401


async def test_a_replay_of_a_secret_says_no_store_again(client: httpx.AsyncClient) -> None:
    w = await world(client)
    gateway = await client.post("/v1/gateways", json={"name": "alipay"},
                                headers={**w.admin, "Idempotency-Key": "gw"})  # fmt: skip
    for path, body in [
        ("/v1/api-keys", {"role": "dashboard"}),
        ("/v1/gateways", {"name": "unionpay"}),
        ("/v1/webhook-endpoints", {"url": "https://hooks.example.com/loanwatch"}),
        ("/v1/gateways/alipay/rotate-secret", None),
    ]:  # fmt: skip
        headers = {**w.admin, "Idempotency-Key": f"secret-{path}"}
        first = await client.post(path, json=body, headers=headers)
        second = await client.post(path, json=body, headers=headers)
        assert first.status_code < 300, first.text
        assert second.headers["idempotent-replayed"] == "true"
        assert first.headers["cache-control"] == second.headers["cache-control"] == "no-store"
        # The same bytes but for the secret, shown once.
        shown = first.json()
        secret = next(field for field in ("key", "secret") if shown.get(field))
        assert second.content == first.content.replace(f'"{shown[secret]}"'.encode(), b"null")
    assert gateway.status_code == 201
    plain = {**w.admin, "Idempotency-Key": "no-secret"}
    await client.post("/v1/merchants", json={"name": "B"}, headers=plain)
    replayed = await client.post("/v1/merchants", json={"name": "B"}, headers=plain)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert "cache-control" not in replayed.headers


FAIL_STORING_ANSWERS = """
CREATE FUNCTION fail_storing_answers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status_code IS NOT NULL THEN
        RAISE EXCEPTION 'the database went away as the answer was stored';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_storing_answers BEFORE UPDATE ON idempotency_record
    FOR EACH ROW EXECUTE FUNCTION fail_storing_answers();
"""


async def test_a_change_whose_answer_was_lost_is_not_made_again(
    app: Any, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payment commits, then storing its answer fails (the database went away: a
    tester's proxy cut it there): the client gets a 500, and its retry after the claim's lock
    ran out recorded the payment a second time, nothing else stopping it (no external_ref).
    The payment's own transaction marks the key applied, so the retry is told instead."""
    monkeypatch.setattr(get_settings(), "idempotency_lock_seconds", 1)
    w = await world(client)
    loan = await w.loan()
    path, body = f"/v1/loans/{loan['id']}/payments", {"amount": "10.00", "channel": "pos"}
    headers = {**w.merchant, "Idempotency-Key": "pay-once"}
    admin = await asyncpg.connect(TEST_DSN)
    try:
        await admin.execute(FAIL_STORING_ANSWERS)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://loanwatch.test") as raw:
            first = await raw.post(path, json=body, headers=headers)
        assert first.status_code == 500
    finally:
        await admin.execute("DROP TRIGGER fail_storing_answers ON idempotency_record")
        await admin.execute("DROP FUNCTION fail_storing_answers()")
        await admin.close()
    assert await count(Payment) == 1
    await asyncio.sleep(1.2)  # the claim's lock runs out
    retry = await client.post(path, json=body, headers=headers)
    assert (retry.status_code, retry.json()["code"]) == (409, "idempotency_answer_lost")
    assert await count(Payment) == 1
    # It names what the request created, kept as its transaction committed: after a crash
    # the POS could not tell which of a loan's identical payments was its key's (a tester's).
    async with session_scope() as session:
        paid = await session.scalar(select(Payment.id))
    assert retry.json()["location"] == f"/v1/payments/{paid}"
    assert f"GET /v1/payments/{paid} instead of retrying" in retry.json()["detail"]
    assert (await client.get(retry.json()["location"], headers=w.merchant)).status_code == 200


async def test_a_slow_request_whose_claim_was_taken_over_applies_nothing(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payment waits on its loan's row lock past the claim's lock; its retry takes the claim
    over and waits too. Both ran once the lock was released, and one key recorded two payments
    (a tester's, holding the lock 75 s). The slow one's commit names a claim it no longer
    holds: it rolls back."""
    monkeypatch.setattr(get_settings(), "idempotency_lock_seconds", 1)
    w = await world(client)
    loan = await w.loan()
    path, body = f"/v1/loans/{loan['id']}/payments", {"amount": "9.00", "channel": "pos"}
    headers = {**w.merchant, "Idempotency-Key": "slow-pay"}
    blocker = await asyncpg.connect(TEST_DSN)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("SELECT id FROM loan WHERE id = $1 FOR UPDATE", loan["id"])
        slow = asyncio.create_task(client.post(path, json=body, headers=headers))
        await asyncio.sleep(0.3)
        in_progress = await client.post(path, json=body, headers=headers)
        assert (in_progress.status_code, in_progress.json()["code"]) == (
            409, "idempotency_request_in_progress",
        )  # fmt: skip
        await asyncio.sleep(1.2)  # the claim's lock runs out while the first still waits
        retry = asyncio.create_task(client.post(path, json=body, headers=headers))
        await asyncio.sleep(0.3)
        await locked.commit()
        answers = sorted([await slow, await retry], key=lambda r: r.status_code)
    finally:
        await blocker.close()
    assert [a.status_code for a in answers] == [201, 409]
    assert answers[1].json()["code"] == "idempotency_request_in_progress"
    assert await count(Payment) == 1
    async with session_scope() as session:
        received = await session.scalar(
            select(func.count()).select_from(Event).where(Event.type == "payment.received")
        )
    assert received == 1
    replay = await client.post(path, json=body, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == answers[0].json()


async def test_answers_before_the_router_are_counted_under_their_route(
    client: httpx.AsyncClient,
) -> None:
    """A replay and a key reused are answered by the idempotency middleware, before the
    router: they were counted as "unmatched", and a per-route alert missed them (a tester's)."""
    w = await world(client)

    async def counted(status: int) -> float:
        text = (await client.get("/metrics", headers=w.admin)).text
        series = f'method="POST",route="/v1/merchants",status="{status}"'
        line = f"loanwatch_http_requests_total{{{series}}}"
        found = [row.split()[-1] for row in text.splitlines() if row.startswith(line)]
        return float(found[0]) if found else 0.0

    created, refused = await counted(201), await counted(422)
    headers = {**w.admin, "Idempotency-Key": "metrics-1"}
    for name in ("m1", "m1", "m2"):  # created, replayed, the key reused
        await client.post("/v1/merchants", json={"name": name}, headers=headers)
    assert (await counted(201), await counted(422)) == (created + 2, refused + 1)
