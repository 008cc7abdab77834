"""A request a stopping server cancels (uvicorn's grace period over) is answered 503
``service_stopping``, not uvicorn's 500: payments waiting on rows a close held were told the
server failed (a tester's). Nothing of them was stored."""

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.types import ASGIApp, Message

from tests.conftest import TEST_DSN
from tests.factories import world


@pytest.mark.parametrize("idempotency_key", [None, "stopped-1"])
async def test_a_payment_cancelled_while_it_waits_for_its_loan_is_answered_503(
    app: ASGIApp, client: httpx.AsyncClient, idempotency_key: str | None
) -> None:
    """With an Idempotency-Key the key's release, which the cancellation runs, waits here on
    its record's row, as it waited on a database the stop was closing: the answer went only
    once it was over, after the process had gone, and the client got none (a re-verifier's)."""
    w = await world(client)
    loan = await w.loan()
    path = f"/v1/loans/{loan['id']}/payments"
    body = b'{"amount": "50.00"}'
    headers = [(b"host", b"loanwatch.test"),
               (b"authorization", w.merchant["Authorization"].encode()),
               (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    if idempotency_key:
        headers.append((b"idempotency-key", idempotency_key.encode()))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("loanwatch.test", 80),
        "headers": headers,
    }  # fmt: skip
    received = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if received:
            return received.pop()
        await asyncio.Event().wait()  # the client stays
        raise AssertionError

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    holder = await asyncpg.connect(TEST_DSN)
    try:
        async with holder.transaction():  # the loan's row, as a close's chunk holds it
            await holder.execute("SELECT 1 FROM loan WHERE id = $1 FOR UPDATE", loan["id"])
            request = asyncio.create_task(app(scope, receive, send))
            await asyncio.sleep(0.5)
            assert not sent  # waiting for the row
            if idempotency_key:  # the key's claim, committed: its release will wait
                await holder.execute(
                    "SELECT 1 FROM idempotency_record WHERE key = $1 FOR UPDATE", idempotency_key
                )
            request.cancel()  # as a stopping uvicorn does once its grace period is over
            # Answered while the release still waits, and over: no error for uvicorn to log.
            done, _ = await asyncio.wait({request}, timeout=10)
            assert request in done
            assert request.exception() is None
            assert sent[0]["type"] == "http.response.start"
    finally:
        await holder.close()
    assert sent[0]["status"] == 503
    assert b'"code":"service_stopping"' in b"".join(m.get("body", b"") for m in sent[1:])
    ledger = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [t["kind"] for t in ledger] == ["disbursement"]
