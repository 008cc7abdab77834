"""U+0000 is refused in every request, on both databases alike: PostgreSQL text cannot hold it
(the INSERT or even a look-up by it fails), SQLite would store it. Checked before anything
else runs, so a refused request has written nothing, not even an idempotency claim."""

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.bodies import read_body, replay_body
from app.errors import problem

# A JSON "\u0000" escape that is not itself escaped: an even run of backslashes before it.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def carries_nul(body: bytes) -> bool:
    return b"\x00" in body or (b"\\u0000" in body and _ESCAPED_NUL.search(body) is not None)


class RefuseNulCharacters:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = None
        if "\x00" in scope["path"]:
            where = "path"
        elif b"%00" in scope["query_string"]:
            where = "query"
        elif scope["method"] in _WITH_BODY:
            body = await read_body(receive)
            if carries_nul(body):
                where = "body"
            receive = replay_body(body)
        if where is None:
            await self.app(scope, receive, send)
            return
        response = problem(
            422, "validation_error", "Invalid request",
            f"the request's {where} contains the NUL character (U+0000), which no field accepts",
            errors=[{"field": where, "message": "contains U+0000", "type": "nul_character"}],
        )  # fmt: skip
        await response(scope, receive, send)
