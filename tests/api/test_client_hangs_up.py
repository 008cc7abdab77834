"""A client that hangs up before its body has all arrived sent no request: nothing is done
(RFC 9112 §8). The middlewares read bodies whole, and took the disconnect for the body's end:
a cancel sent headers only, or a payment without its last chunk, was carried out (a
re-verifier's)."""

from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from tests.factories import World, world


async def hang_up(app: ASGIApp, w: World, path: str, framing: tuple[bytes, bytes],
                  *chunks: bytes) -> list[Message]:  # fmt: skip
    """The request's head and these chunks of its body, then the client is gone."""
    token = w.merchant["Authorization"].encode()
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("loanwatch.test", 80),
        "headers": [(b"host", b"loanwatch.test"), (b"authorization", token), framing,
                    (b"content-type", b"application/json")],
    }  # fmt: skip
    messages: list[Message] = [
        *({"type": "http.request", "body": c, "more_body": True} for c in chunks),
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    "framing", [(b"transfer-encoding", b"chunked"), (b"content-length", b"40")]
)
async def test_a_body_cut_short_is_no_request(
    app: ASGIApp, client: httpx.AsyncClient, framing: tuple[bytes, bytes]
) -> None:
    w = await world(client)
    loan = await w.loan()
    await hang_up(app, w, f"/v1/loans/{loan['id']}/cancel", framing)
    await hang_up(app, w, f"/v1/loans/{loan['id']}/payments", framing, b'{"amount": "50.00"}')
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["status"] == "active"
    ledger = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [t["kind"] for t in ledger] == ["disbursement"]
