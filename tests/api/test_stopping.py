"""A request a stopping server cancels (uvicorn's grace period over) is answered 503
``service_stopping``, not uvicorn's 500: payments waiting on rows a close held were told the
server failed (a tester's). Nothing of them was stored."""

import asyncio
from typing import Any

import asyncpg
import httpx
from starlette.types import ASGIApp, Message

from tests.conftest import TEST_DSN
from tests.factories import world


async def test_a_payment_cancelled_while_it_waits_for_its_loan_is_answered_503(
    app: ASGIApp, client: httpx.AsyncClient
) -> None:
    w = await world(client)
    loan = await w.loan()
    path = f"/v1/loans/{loan['id']}/payments"
    body = b'{"amount": "50.00"}'
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("loanwatch.test", 80),
        "headers": [(b"host", b"loanwatch.test"),
                    (b"authorization", w.merchant["Authorization"].encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
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
            request.cancel()  # as a stopping uvicorn does once its grace period is over
            await request  # answered, over: not an error for uvicorn to log
    finally:
        await holder.close()
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 503
    assert b'"code":"service_stopping"' in b"".join(m.get("body", b"") for m in sent[1:])
    ledger = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [t["kind"] for t in ledger] == ["disbursement"]
