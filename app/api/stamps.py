"""What every response carries, whichever layer answered it: its request's id and `nosniff`.

The id (`X-Request-ID`) is in the request's lines of the server's log too, so a POS's support
ticket quoting it finds them. A client's own id (its trace id) is kept when it is plain, else
replaced: a header's text is written into the log, where a line break would forge a line.

`nosniff`: a problem echoes what the client sent (a field's value), and a browser sniffing a
JSON body for HTML could run it; the dashboard and the docs pages sent it, the JSON did not.

Outermost, ahead of GET /v1/loans/{id}'s lane, so a request the lane answers has both too."""

import logging
import re
import secrets
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_PLAIN = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class StampResponses:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = [value for name, value in scope["headers"] if name == HEADER]
        plain = len(given) == 1 and _PLAIN.fullmatch(given[0])  # given twice: which one?
        this_request = given[0] if plain else secrets.token_hex(8).encode()
        stamps = [(HEADER, this_request), _NOSNIFF]

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *stamps]
            await send(message)

        # Not reset after: uvicorn runs each request in a task of its own, whose context ends
        # with it, and logs an exception the app raised after the app has returned.
        request_id.set(this_request.decode())
        await self.app(scope, receive, stamped)


class WithRequestId(logging.Filter):
    """Gives a log record ` request=<id>` within a request, nothing outside one, for the
    log's format (`%(request)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        this_request = request_id.get()
        record.request = f" request={this_request}" if this_request else ""
        return True
