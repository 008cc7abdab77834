"""Cursor pagination: lists are ordered by id (ids sort by creation), the cursor is the last
id of the page with the list's path and a check of both, opaque to clients: a cursor is good
only on the list that returned it, and only as it returned it."""

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query, Request
from pydantic import BaseModel, BeforeValidator

from app.errors import InvalidRequest

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    limit: int
    after_id: str | None
    list_path: str


def _check(position: str) -> str:
    # Not a secret: it tells a cursor cut short or altered in transit, which read as another
    # key and repeated rows or ended the list early (a tester's), from the one returned.
    return hashlib.blake2b(position.encode(), digest_size=6).hexdigest()


def encode_cursor(list_path: str, last_id: str) -> str:
    position = f"{list_path}\n{last_id}"
    text = f"{position}\n{_check(position)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(list_path: str, cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    position, _, check = decoded.rpartition("\n")
    path, _, last_id = position.partition("\n")
    if (
        path != list_path
        or not last_id
        or not last_id.isprintable()
        or not hmac.compare_digest(check, _check(position))
        # Only as returned: padding the decoder ignores made another text the same cursor.
        or cursor != encode_cursor(list_path, last_id)
    ):
        raise InvalidRequest.field("cursor", "is not a cursor this list returned")
    return last_id


_INTEGER_KEY = re.compile(r"[0-9]{1,18}")  # ASCII digits, within a BIGINT


def after_integer(page: PageParams) -> int | None:
    """The cursor of a list keyed by an integer (event positions, ledger and delivery ids)."""
    if page.after_id is None:
        return None
    if not _INTEGER_KEY.fullmatch(page.after_id):
        raise InvalidRequest.field("cursor", "is not a cursor this list returned")
    return int(page.after_id)


_COUNT = re.compile(r"[0-9]+")


def _plain_count(value: object) -> object:
    """ASCII digits alone: the parser also reads "5_0" as 50 and " 5", "+5", "5.0" as 5, and a
    typo in a limit is better refused than answered with another page size (a tester's)."""
    if not _COUNT.fullmatch(str(value)):
        raise ValueError("must be a whole number in ASCII digits")
    return value


def page_params(
    request: Request,
    # Query first: after a validator its bounds reached the document as "ge" and "le", which
    # JSON Schema does not know (a re-verifier's), instead of minimum and maximum.
    limit: Annotated[int, Query(ge=1, le=200), BeforeValidator(_plain_count)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PageParams:
    path = request.url.path
    after_id = decode_cursor(path, cursor) if cursor else None
    return PageParams(limit=limit, after_id=after_id, list_path=path)


def page_of(
    rows: Sequence[Any],
    page: PageParams,
    item: Callable[[Any], T],
    key: Callable[[Any], str] = attrgetter("id"),
) -> Page[T]:
    """Shape the limit + 1 rows a service fetched into a page and its cursor."""
    return Page[T](
        items=[item(row) for row in rows[: page.limit]],
        next_cursor=(
            encode_cursor(page.list_path, key(rows[page.limit - 1]))
            if len(rows) > page.limit
            else None
        ),
    )
