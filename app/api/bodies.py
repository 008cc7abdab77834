"""Request bodies in plain ASGI middleware: read one whole, then hand it on unchanged; and
the one limit on their size."""

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import get_settings
from app.errors import problem


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole body; ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if limit is not None and size > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes) -> Receive:
    """A ``receive`` that yields ``body`` once, as the app downstream expects to read it."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class LimitBodySize:
    """413 ``payload_too_large`` for a body over ``LOANWATCH_MAX_BODY_BYTES``, before anything
    reads it: the middleware after this one holds a whole body in memory, and no request of
    the API comes near the limit. A declared length is refused unread; a chunked body is
    counted as it arrives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_body_bytes
        declared, chunked = _framing(scope)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send)
            return
        if chunked:  # no length declared: count it as it arrives
            try:
                receive = replay_body(await read_body(receive, limit))
            except BodyTooLarge:
                await _too_large(limit)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The body's declared length, if any, and whether it comes in chunks."""
    declared, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            declared = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


def _too_large(limit: int) -> Response:
    return problem(
        413, "payload_too_large", "Payload too large",
        f"the request body is larger than {limit} bytes, the most this API accepts",
    )  # fmt: skip
