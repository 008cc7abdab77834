"""Request bodies in plain ASGI middleware: read one whole, then hand it on unchanged; the
one limit on their size; and the one media type they come in."""

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import get_settings
from app.errors import LoanwatchError, problem


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole body; ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect  # a body cut short is no request to act on (RFC 9112 §8)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if limit is not None and size > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _peek(receive: Receive) -> tuple[bool, Receive]:
    """Whether a body sent in chunks holds a byte, and a ``receive`` that yields it whole."""
    held: list[Message] = []
    while True:
        held.append(await receive())
        if held[-1]["type"] == "http.disconnect":
            raise ClientDisconnect
        if held[-1].get("body") or not held[-1].get("more_body", False):
            break

    async def replay() -> Message:
        return held.pop(0) if held else await receive()

    return bool(held[-1].get("body")), replay


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
            except ClientDisconnect:
                return  # nobody to answer, and nothing to do
        await self.app(scope, receive, send)


class RequireJson:
    """415 ``unsupported_media_type`` for a body declared as anything but JSON, or declared
    encoded (``Content-Encoding``), before anything reads it. FastAPI leaves a body of another
    media type unparsed (also one of no declared type), so a form post or ``text/plain`` was
    a 422 saying the body is no object, though it was one.

    Gateways' notifications are exempt from the media type: the route reads their bytes as
    JSON, whatever they are declared as, once their signature is checked, and a debit result
    must not be lost to a sender that leaves the header out. Not from the coding: a gzip
    notification was refused as text holding U+0000 (a re-verifier's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        if transfer_coding := _transfer_coding(scope):
            await _unknown_transfer_coding(transfer_coding)(scope, receive, send)
            return
        media_type, charset = _content_type(scope)
        declared = media_type
        if charset not in (None, "utf-8", "utf8"):
            # JSON is UTF-8 (RFC 8259 §8.1), and the body is read as such: a body declared in
            # another encoding was read as UTF-8 all the same (a tester's repro).
            declared = f"{media_type}; charset={charset}"
        not_json = not _is_inbound(scope["path"]) and (
            not _is_json(media_type) or declared != media_type
        )
        coding = _content_coding(scope)
        if not (not_json or coding):
            await self.app(scope, receive, send)
            return
        if not _framing(scope)[0]:  # chunked: an empty body may come so (a re-verifier's)
            try:
                carries_bytes, receive = await _peek(receive)
            except ClientDisconnect:
                return
            if not carries_bytes:
                await self.app(scope, receive, send)
                return
        route = matching_route(scope)
        if route is None:  # no such route: its 404 (or 405), not the body's media type
            await self.app(scope, receive, send)
            return
        refusal = await _caller_refused(route, scope)
        if refusal is None:
            refusal = _not_json(scope["method"], declared, coding) if not_json else _encoded(coding)
        await refusal(scope, receive, send)


def matching_route(scope: Scope) -> BaseRoute | None:
    """The route the request's method and path reach, if any."""
    return next((r for r in scope["app"].router.routes if r.matches(scope)[0] is Match.FULL), None)


async def _caller_refused(route: BaseRoute, scope: Scope) -> Response | None:
    """401 or 403 for a caller the route refuses, as for any other input it refuses
    (docs/decisions.md: the caller before the body): a 415 told a caller with no key the
    media type the endpoint takes (a tester's)."""
    check_caller = getattr(route, "check_caller", None)
    if check_caller is None:
        return None
    try:
        await check_caller(Request(scope))
    except LoanwatchError as exc:
        return problem(exc.status, exc.code, exc.title, exc.detail, exc.errors, exc.headers)
    return None


def _is_inbound(path: str) -> bool:
    return path.startswith("/v1/inbound/")


def _has_body(scope: Scope) -> bool:
    declared, chunked = _framing(scope)
    return chunked or bool(declared)


def _content_type(scope: Scope) -> tuple[str, str | None]:
    """The declared media type (lower case, "" if none) and its charset parameter, if any."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type, *parameters = bytes(value).decode("latin-1").lower().split(";")
            charset = None
            for parameter in parameters:
                key, _, given = parameter.partition("=")
                if key.strip() == "charset":
                    charset = given.strip().strip('"')
            return media_type.strip(), charset
    return "", None


def _is_json(media_type: str) -> bool:
    # application/json, and the structured +json types (RFC 6839), e.g. merge-patch+json.
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _not_json(method: str, media_type: str, coding: str) -> Response:
    # RFC 9110 §15.5.16: say which media type the resource takes (Accept-Post, Accept-Patch),
    # and the coding too when the body was declared encoded as well.
    accept = {"POST": "Accept-Post", "PATCH": "Accept-Patch"}.get(method)
    headers = {accept: "application/json"} if accept else {}
    if coding:
        headers["Accept-Encoding"] = "identity"
    return problem(
        415, "unsupported_media_type", "Unsupported media type",
        f"the request body is {media_type or 'of no media type'}; send it as "
        "application/json (Content-Type: application/json)"
        + (f", unencoded (it is declared {coding})" if coding else ""),
        headers=headers or None,
    )  # fmt: skip


def _codings_beyond(scope: Scope, header: bytes, understood: str) -> str:
    """The codings the header declares on the body beyond the one understood ("" if none)."""
    codings = [
        coding.strip()
        for name, value in scope["headers"]
        if name == header
        for coding in bytes(value).decode("latin-1").lower().split(",")
    ]
    return ", ".join(c for c in codings if c and c != understood)


def _content_coding(scope: Scope) -> str:
    """The content codings declared beyond ``identity``: none is applied to a request body."""
    return _codings_beyond(scope, b"content-encoding", "identity")


def _transfer_coding(scope: Scope) -> str:
    """The transfer codings declared beyond ``chunked``, the one the server decodes."""
    return _codings_beyond(scope, b"transfer-encoding", "chunked")


def _unknown_transfer_coding(coding: str) -> Response:
    # RFC 9112 §6.1: a transfer coding the server does not understand is a 501. Ignored, a
    # body declared "gzip, chunked" was booked as it came, and a real gzip one was refused as
    # text holding U+0000, as a content coding was before it was refused (a tester's).
    return problem(
        501, "not_implemented", "Not implemented",
        f"the request body is declared with the transfer coding {coding}; only chunked is "
        "understood: send the body unencoded",
    )  # fmt: skip


def _encoded(coding: str) -> Response:
    # RFC 9110 §15.5.16 and §12.5.3: a coding the server does not apply is a 415 naming the
    # codings it takes. Ignored, a gzip body was read as text ("contains U+0000") and a plain
    # body declared gzip was taken as it came (a tester's).
    return problem(
        415, "unsupported_media_type", "Unsupported media type",
        f"the request body is declared encoded as {coding}; send it unencoded "
        "(no Content-Encoding)",
        headers={"Accept-Encoding": "identity"},
    )  # fmt: skip


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
