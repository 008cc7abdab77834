"""The root error and the one problem+json (RFC 9457) renderer."""

import json
import logging
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from app.api.stamps import request_id
from app.db import DRIVER_CONNECTION_ERRORS, is_connection_lost, is_transient

log = logging.getLogger("loanwatch.errors")

PROBLEM_TYPE_BASE = "https://loanwatch.dev/problems/"

T = TypeVar("T")


class LoanwatchError(Exception):
    """An expected failure with its HTTP status and machine-readable code."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"
    headers: ClassVar[dict[str, str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A code of its own has a title of its own (RFC 9457: the title summarises the type):
        # the code in words, unless the class words it better. Seventeen 409s were "Conflict".
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__ and "title" not in cls.__dict__:
            cls.title = cls.code.replace("_", " ").capitalize()

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class NotFound(LoanwatchError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(LoanwatchError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PreconditionFailed(LoanwatchError):
    status = 412
    code = "precondition_failed"
    title = "Precondition failed"


class Unauthorized(LoanwatchError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"
    # RFC 9110: a 401 names the scheme it wants (RFC 6750 for bearer tokens).
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": 'Bearer realm="loanwatch"'}


class Forbidden(LoanwatchError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class InvalidRequest(LoanwatchError):
    """Input that is well-formed JSON but not acceptable; names the fields at fault."""

    status = 422
    code = "validation_error"
    title = "Invalid request"

    @classmethod
    def field(cls, field: str, message: str) -> "InvalidRequest":
        return cls(f"{field}: {message}", errors=[{"field": field, "message": message}])

    @classmethod
    def of(cls, exc: ValidationError) -> "InvalidRequest":
        """A body validated by hand (not by FastAPI), its errors named as FastAPI's are."""
        errors = [_field_error(error) for error in exc.errors()]
        return cls(_summary(errors), errors=errors)


class FieldErrors:
    """A request's checks that each name a field, run together: one 422 names every field at
    fault (SPEC: validation errors list each field), not one per round trip."""

    def __init__(self) -> None:
        self._errors: list[dict[str, Any]] = []

    def add(self, field: str, message: str) -> None:
        self._errors.append({"field": field, "message": message})

    def check(self, parse: Callable[[], T]) -> T | None:
        """``parse()``, or None with the fields it found at fault kept."""
        try:
            return parse()
        except InvalidRequest as exc:
            self._errors.extend(exc.errors or [{"field": "body", "message": exc.detail}])
            return None

    def raise_any(self) -> None:
        if self._errors:
            raise InvalidRequest(_summary(self._errors), errors=self._errors)


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"

    def render(self, content: Any) -> bytes:
        # A problem may quote the request (a key it names twice), and JSON lets a string hold
        # a lone surrogate ("\\ud800") that UTF-8 cannot: escaped as JSON would escape it,
        # not a 500 from the encoder (a tester's).
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    location: str | None = None,
) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": shown(detail),
        "code": code,
    }
    if location is not None:
        body["location"] = location
    if errors is not None:
        body["errors"] = [
            {key: shown(value) if key in ("field", "message") else value
             for key, value in error.items()}
            for error in errors[:_LISTED_ERRORS]
        ]  # fmt: skip
    return ProblemResponse(body, status_code=status, headers=headers)


# Control and format characters (bidirectional overrides, zero-width ones) and the line and
# paragraph separators; spaces of every kind are text (U+3000 in Chinese input).
_HIDDEN = {"Cc", "Cf", "Zl", "Zp"}


def shown(text: str) -> str:
    """The text with its control and format characters written as escapes: a detail repeats
    what the request named, and "loan \u202e…" turned the text around in a console showing
    it (a tester's)."""
    if text.isprintable():
        return text
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in _HIDDEN else c for c in text)


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or (str(loc[0]) if loc else "")


async def _loanwatch_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LoanwatchError)
    return problem(exc.status, exc.code, exc.title, exc.detail, exc.errors, exc.headers)


_NOT_AN_OBJECT = {"model_type", "model_attributes_type", "dict_type"}


def _field_error(error: Any) -> dict[str, Any]:
    if error["type"] == "json_invalid":
        # FastAPI puts the character position where a field name would be; Pydantic's own
        # JSON parsing gives none.
        at = f" (at character {error['loc'][-1]})" if len(error["loc"]) > 1 else ""
        return {"field": "body", "message": f"not valid JSON{at}", "type": "json_invalid"}
    # Our own validators' messages are written for the client: without Pydantic's prefix.
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in _NOT_AN_OBJECT:
        # Pydantic's "valid dictionary or object to extract fields from" speaks Python; a
        # client sent an origination fee as "0.00" where an object is asked (a tester's).
        message = "must be a JSON object (its fields are in /openapi.json)"
    return {"field": _field_path(tuple(error["loc"])) or "body", "message": message,
            "type": error["type"]}  # fmt: skip


# A body of 60,000 unknown keys (1 MiB) was answered with 7.6 MB naming each twice (a
# tester's): an answer names the first fields at fault, and says how many more there are.
_LISTED_ERRORS = 100
_SUMMARISED_ERRORS = 10


def _summary(errors: list[dict[str, Any]]) -> str:
    named = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:_SUMMARISED_ERRORS])
    if (more := len(errors) - _SUMMARISED_ERRORS) <= 0:
        return named
    listed = min(len(errors), _LISTED_ERRORS)
    return f"{named}; and {more} more ({listed} in errors)"


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    return problem(422, "validation_error", "Invalid request", _summary(errors), errors)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _invalid([_field_error(e) for e in exc.errors()])


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a JSON body its parser failed on other than as a syntax error:
        # the same 422 as any other body that is not JSON. Bytes that are not text, since
        # app/api/unambiguous.py refuses the rest first; the reason said only when it is that.
        undecodable = isinstance(exc.__cause__, UnicodeDecodeError)
        message = "not valid JSON (undecodable bytes)" if undecodable else "not valid JSON"
        return _invalid([{"field": "body", "message": message, "type": "json_invalid"}])
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
    code = codes.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem(
        exc.status_code, code, code.replace("_", " ").capitalize(), str(exc.detail),
        headers=headers or None,
    )  # fmt: skip


def _allowed_methods(request: Request) -> str:
    """Every method of the path: Starlette names only the first route's, and FastAPI has a
    route per method (RFC 9110 asks a 405 for all of them). HEAD is answered wherever GET is
    (``app.api.head``)."""
    methods: set[str] = set()
    for route in _routes(request.app.routes):
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    # FastAPI keeps an included router whole, as one route (tests/api/test_openapi.py).
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


async def _integrity_error(_: Request, exc: Exception) -> JSONResponse:
    # Services check uniqueness first; this answers the rare concurrent twin that slipped
    # between the check and the insert, whose transaction has been rolled back.
    return problem(
        409, "conflict", "Conflict",
        "a concurrent request changed the same resource; nothing was stored, retry the request",
        headers={"Retry-After": "1"},
    )  # fmt: skip


def _no_connection_free(request: Request) -> JSONResponse:
    # No connection came free in time (a long close on the embedded default's one SQLite
    # connection, or an exhausted pool): a retry will do, nothing was written. Logged, as the
    # lost races are: a burst answered 503 left only access lines (a tester's).
    log.warning("%s %s waited out the connection pool", request.method, request.url.path)
    return problem(
        503, "service_busy", "Service busy",
        "the database is busy; nothing was stored, retry the request shortly",
        headers={"Retry-After": "5"},
    )  # fmt: skip


def _lost_race(request: Request, exc: Exception) -> JSONResponse:
    # Lock orders keep these away (docs/architecture.md); should one come anyway, the request
    # lost a race whose transaction was rolled back, and a retry will do. On SQLite: another
    # process held the file past the busy timeout.
    log.warning(
        "%s %s lost a race in the database: %s",
        request.method,
        request.url.path,
        getattr(exc, "orig", exc),
    )
    return problem(
        503, "service_busy", "Service busy",
        "a concurrent request held the same records; nothing was stored, retry the request",
        headers={"Retry-After": "1"},
    )  # fmt: skip


def database_trouble(request: Request, exc: Exception) -> JSONResponse | None:
    """The 503 for a database lost, unreachable or busy; None for any other error."""
    if is_connection_lost(exc):
        return database_unavailable(request, exc)
    if isinstance(exc, PoolTimeout):
        return _no_connection_free(request)
    if is_transient(exc):
        return _lost_race(request, exc)
    return None


def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    cause = getattr(exc, "orig", exc)  # named: a connect's TimeoutError has no words
    log.warning("%s %s lost its database connection: %s: %s", request.method,
                request.url.path, type(cause).__name__, cause)  # fmt: skip
    if request.method in ("GET", "HEAD"):
        # A read changes nothing: a key to retry it with means nothing (a tester's).
        detail = "the connection to the database was lost or refused; retry the request"
    else:
        detail = (
            "the connection to the database was lost or refused; had it been lost as the "
            "request committed, the request may have been applied: retry it with the same "
            "Idempotency-Key, which runs it only if it was not"
        )
    return problem(503, "database_unavailable", "Database unavailable", detail,
                   headers={"Retry-After": "5"})  # fmt: skip


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    answer = database_trouble(request, exc)
    if answer is None:
        raise exc  # to the 500 below, logged with its traceback
    return answer


async def _driver_error(request: Request, exc: Exception) -> JSONResponse:
    """The driver's own errors (a read straight from asyncpg) and a refused connection are
    not SQLAlchemy's. Answered here rather than by the last resort below, which closes the
    client's connection after it answers (a re-verifier's reads then failed on it)."""
    if not is_connection_lost(exc):
        raise exc  # to the 500 below, logged with its traceback
    return database_unavailable(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Raised in a middleware, outside the handlers above (an answer that cannot be stored).
    answer = database_trouble(request, exc)
    if answer is not None:
        return answer
    # The id finds the traceback in the server's log: app/api/stamps.py.
    detail = f"An unexpected error occurred (request {request_id.get()})."
    return problem(500, "internal_error", "Internal error", detail)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LoanwatchError, _loanwatch_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(DBAPIError, _database_error)
    for driver_error in DRIVER_CONNECTION_ERRORS:
        app.add_exception_handler(driver_error, _driver_error)
    app.add_exception_handler(Exception, _unexpected_error)
