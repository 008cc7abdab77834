"""Input no field can hold unambiguously, refused before anything else runs, so a refused
request has written nothing, not even an idempotency claim:

* U+0000 anywhere, on both databases alike: PostgreSQL text cannot hold it (the INSERT or even
  a look-up by it fails), SQLite would store it;
* a JSON body naming a key twice in one object: parsers disagree on which one counts (ours
  takes the last), and ``{"amount": "1.00", "amount": "2.00"}`` is not a payment of either;
* a JSON body nested more than ``MAX_DEPTH`` levels (no field nests more than three): Python's
  parser recurses once per level, and a body it read here, nearer the top of the stack, failed
  a later parse deeper in a route with a RecursionError (a 500 on a signed notification 950
  levels deep: a tester's);
* a JSON body holding an integer of more digits than Python reads (4300): every later parse
  of it would fail with a ValueError, which FastAPI took for bytes that are not text;
* a JSON body holding ``NaN``, ``Infinity`` or ``-Infinity``: not JSON (RFC 8259), though
  Python's parser reads them; a field that is not money took them as floats, and a field
  the route ignores (a gateway's own) let them through;
* a query parameter given twice (``?status=active&status=delinquent``): no filter takes a
  list, and keeping the last value answered a different question than the one asked;
* a header that holds one value given twice (``Authorization``, ``Idempotency-Key``,
  ``Content-Type``): the framework took the first Authorization and the last Idempotency-Key,
  and a proxy in front may take the other, so a request could be authorised, or told apart
  from its retries, by a header other than the one a reader of it sees.
"""

import codecs
import itertools
import json
import re
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.bodies import matching_route, read_body, replay_body
from app.errors import problem

# A JSON "\u0000" escape that is not itself escaped: an even run of backslashes before it.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def carries_nul(body: bytes) -> bool:
    return b"\x00" in body or (b"\\u0000" in body and _ESCAPED_NUL.search(body) is not None)


def _first_repeated(names: list[str]) -> str | None:
    # With a set: counting each name's occurrences took quadratic time, and 300 KB of keys
    # with no API key held the server 13 s (a re-verifier's).
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


class _Repeating(dict[str, Any]):
    """An object of the body that names ``repeated`` twice."""

    repeated: str


def repeated_parameter(query_string: bytes) -> str | None:
    """A query parameter the query string names twice, if any."""
    names = [name for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)]
    return _first_repeated(names)


MAX_DEPTH = 64
# A JSON string, or an unterminated one to the end of the body: a pattern that could fail
# would be retried from every later quote, quadratic in a body of escaped quotes (a
# re-verifier's: 64 KB held the event loop for 21 s).
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_LEVELS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def nests_too_deeply(body: bytes) -> bool:
    """Whether the body's arrays and objects open more than ``MAX_DEPTH`` levels, counted
    without recursing: its strings struck out, the deepest running count of brackets opened
    and not closed. Whether they pair does not matter: the parser recurses as deep as they
    open before it finds out they do not (``[`` a thousand times was a 500: a re-verifier's)."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_A_BRACKET).translate(_LEVELS)
    return max(itertools.accumulate(array("b", brackets)), default=0) > MAX_DEPTH


def _first_path(document: Any, found: Callable[[Any], tuple[str, ...] | None]) -> str | None:
    """The path (``installments.1.due_on``; ``body`` at the top) of the first value of the
    document, in its order, for which ``found`` gives the rest of the path (``()`` for the
    value itself)."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        rest = found(value)
        if rest is not None:
            return ".".join((*path, *rest)) or "body"
        if isinstance(value, dict):
            stack.extend(((*path, key), item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, str(i)), item) for i, item in reversed(list(enumerate(value))))
    return None


def duplicate_key(body: bytes) -> str | None:
    """The path of a key some object of the JSON body names twice, if any (a body that is
    not JSON is left to the route's own validation)."""
    repeating = False

    def marking_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeating
        found = dict(pairs)
        if len(found) == len(pairs):
            return found
        marked, repeating = _Repeating(found), True
        marked.repeated = _first_repeated([name for name, _ in pairs]) or ""
        return marked

    try:
        document = json.loads(body, object_pairs_hook=marking_duplicates)
    except ValueError:
        return None
    if not repeating:
        return None
    return _first_path(document, lambda v: (v.repeated,) if isinstance(v, _Repeating) else None)


class _NonFinite(ValueError):
    pass


def _refuse_non_finite(constant: str) -> object:
    raise _NonFinite(constant)


def non_finite_number(body: bytes) -> str | None:
    """``NaN``, ``Infinity`` or ``-Infinity`` if the JSON body holds one outside its strings
    (a body that is not JSON is left to the route's own validation)."""
    if b"NaN" not in body and b"Infinity" not in body:
        return None
    try:
        json.loads(body, parse_constant=_refuse_non_finite)
    except _NonFinite as exc:
        return str(exc)
    except ValueError:
        return None
    return None


class _TooLong:
    pass


def _read_int(digits: str) -> object:
    try:
        return int(digits)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return _TooLong()


def too_long_number(body: bytes) -> str | None:
    """The path (``channel``, ``items.0.amount``; ``body`` at the top) of an integer in the
    JSON body with too many digits to read, if any."""
    limit = sys.get_int_max_str_digits()
    # A scan of the bytes first: most bodies have no digits to speak of, and need no parse.
    # Only from the start of a run of digits, or a body of long runs takes quadratic time.
    if not limit or re.search(rb"(?<![0-9])[0-9]{%d}" % (limit + 1), body) is None:
        return None
    try:
        document = json.loads(body, parse_int=_read_int)
    except ValueError:
        return None
    # None: the digits were in a string.
    return _first_path(document, lambda v: () if isinstance(v, _TooLong) else None)


@dataclass(frozen=True)
class _Refusal:
    detail: str
    field: str
    message: str
    type: str

    def response(self) -> Response:
        return problem(
            422, "validation_error", "Invalid request", self.detail,
            errors=[{"field": self.field, "message": self.message, "type": self.type}],
        )  # fmt: skip


def _nul_in(where: str) -> _Refusal:
    return _Refusal(
        f"the request's {where} contains the NUL character (U+0000), which no field accepts",
        where, "contains U+0000", "nul_character",
    )  # fmt: skip


# Lower-case, as ASGI gives them, with the spelling errors name them by.
SINGLE_VALUED_HEADERS = {
    b"authorization": "Authorization", b"idempotency-key": "Idempotency-Key",
    b"content-type": "Content-Type",
    # A gateway's notification: its key against retries, and its signature.
    b"webhook-id": "webhook-id", b"webhook-timestamp": "webhook-timestamp",
    b"webhook-signature": "webhook-signature",
}  # fmt: skip


def _refusal_of_head(
    path: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> _Refusal | None:
    names = [name for name, _ in headers if name in SINGLE_VALUED_HEADERS]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        header = SINGLE_VALUED_HEADERS[twice]
        return _Refusal(
            f"the request gives the header {header} more than once; it takes one value",
            header, "given twice", "repeated",
        )  # fmt: skip
    if "\x00" in path:
        return _nul_in("path")
    if b"%00" in query:
        return _nul_in("query")
    repeated = repeated_parameter(query) if b"&" in query else None
    if repeated is not None:
        return _Refusal(
            f"the query names the parameter {repeated!r} more than once; it takes one value",
            repeated, "given twice", "repeated",
        )  # fmt: skip
    return None


def wide_encoding(body: bytes) -> str | None:
    """UTF-16 or UTF-32, when the body is in one (by its byte order mark, or by where its
    first characters have the NUL bytes of such an encoding, as RFC 4627 tells them)."""
    if body.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "UTF-32"
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    head = body[:4]
    if len(head) < 4:
        return None
    if head[:3] == b"\0\0\0" or head[1:] == b"\0\0\0":
        return "UTF-32"
    if (head[0] == 0 and head[2] == 0) or (head[1] == 0 and head[3] == 0):
        return "UTF-16"
    return None


def _refusal_of_body(body: bytes) -> _Refusal | None:
    encoding = wide_encoding(body)
    if encoding is not None:
        # Its NUL bytes would be refused as the NUL character, which its sender never sent.
        return _Refusal(
            f"body: not valid JSON (in {encoding}, where JSON between systems is UTF-8: "
            "RFC 8259)",
            "body", f"in {encoding}, not UTF-8", "json_invalid",
        )  # fmt: skip
    if carries_nul(body):
        return _nul_in("body")
    if nests_too_deeply(body):
        return _Refusal(
            f"the body nests arrays or objects more than {MAX_DEPTH} levels deep",
            "body", "nested too deeply", "too_deep",
        )  # fmt: skip
    duplicate = duplicate_key(body)
    if duplicate is not None:
        return _Refusal(
            f"the body gives {duplicate!r} twice (an object naming a key twice)",
            duplicate, "given twice", "duplicate_key",
        )  # fmt: skip
    constant = non_finite_number(body)
    if constant is not None:
        return _Refusal(
            f"the body holds {constant}, which is not a JSON number (RFC 8259)",
            "body", f"{constant} is not JSON", "json_invalid",
        )  # fmt: skip
    too_long = too_long_number(body)
    if too_long is not None:
        return _Refusal(
            f"the body's {too_long!r} holds a number too long to read (more than "
            f"{sys.get_int_max_str_digits()} digits)",
            too_long, "a number too long to read", "number_too_long",
        )  # fmt: skip
    return None


class RefuseAmbiguousInput:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _refusal_of_head(scope["path"], scope["query_string"], scope["headers"])
        if refusal is None and scope["method"] in _WITH_BODY:
            try:
                body = await read_body(receive)
            except ClientDisconnect:
                # Read whole before, a body cut short by a client hanging up was acted on:
                # a cancel, a payment (a re-verifier's).
                return
            refusal = _refusal_of_body(body)
            receive = replay_body(body)
            if refusal is not None and matching_route(scope) is None:
                # No such route: its 404 (or 405), not what its body holds (a gzip body to
                # an unknown path was a 422 for holding U+0000: a tester's).
                refusal = None
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal.response()(scope, receive, send)
