"""Idempotency-Key on every POST (SPEC: conventions).

Same key and same request → the stored response is replayed with ``Idempotent-Replayed: true``;
same key, different request → 422 ``idempotency_key_reused``; same key while the first request
is still running → 409 ``idempotency_request_in_progress``. Keys are scoped to the API key (by
its hash) and kept ``idempotency_ttl_hours``.

The record is claimed with an INSERT … ON CONFLICT DO NOTHING in its own transaction before the
request runs, so two concurrent requests with one key cannot both run. The request's own
transaction marks the record applied as it commits (``before_commit``). If a process dies, or
the database goes away, after that commit but before the response is stored, a retry after the
claim expires (``idempotency_lock_seconds``) is not run again: it is told the request was
applied and its answer lost (409 ``idempotency_answer_lost``). One that rolled back, or never
reached its commit, runs again.

Each claim has a token of its own (``claim``), and the request's commit and its stored answer
name it: a request still running when a retry took its claim over (slow, not dead: a lock wait
past the expiry) can commit nothing and store nothing, so one key never makes two changes.
"""

import hashlib
import json
import logging
import secrets
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Executable,
    LargeBinary,
    Result,
    String,
    Table,
    bindparam,
    delete,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import hash_key
from app.api.bodies import read_body, replay_body
from app.api.deps import authenticate, before_commit
from app.config import get_settings
from app.db import (
    Base,
    UTCDateTime,
    database,
    execute_counting,
    is_connection_lost,
    is_transient,
    utc_now,
)
from app.errors import Conflict, Unauthorized, database_trouble, problem

log = logging.getLogger("loanwatch.idempotency")

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
# Responses worth replaying. A 5xx, a 401, anything with Retry-After (a transient conflict)
# or a 422 validation_error is not stored: the retry should run again.
UNSTORED_STATUSES = {401, 500, 502, 503, 504}
SECRET_FIELDS = ("key", "secret")
# A gateway's notifications carry their own idempotency key, the signed ``webhook-id``, which
# is applied after the signature is checked and records only what was applied. An
# ``Idempotency-Key`` beside it stored the 404 of a chargeback that came before its debit,
# and replayed that 404 to every retry (a tester's), and answered a bad signature with the
# stored 200.
SIGNED_NOTIFICATIONS = "/v1/inbound/"


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_record"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column()
    content_type: Mapped[str | None] = mapped_column(String(100))
    # Replayed as sent: a response that showed a secret says no-store again on its replay.
    cache_control: Mapped[str | None] = mapped_column(String(100))
    # A 201's Location: the replay names the object the first answer created.
    location: Mapped[str | None] = mapped_column(String(300))
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, index=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set by the request's own transaction: the change it made committed.
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The token of the request holding the key, new at each takeover.
    claim: Mapped[str | None] = mapped_column(String(32))


# What the request created (the path its 201 names), as the route names it: kept with the
# key as the request's own transaction marks it applied, so a retry told the answer was lost
# is told where to look (a tester's: after a crash, five identical 37.00 payments on one loan,
# and no telling which was the key's).
_created: ContextVar[list[str] | None] = ContextVar("created", default=None)


def record_created(path: str) -> None:
    """Name the object this request created, for its Idempotency-Key's record."""
    holder = _created.get()
    if holder is not None:
        holder.append(path)


@dataclass(frozen=True)
class _AnswerLost:
    location: str | None


class ClaimTakenOver(Conflict):
    """The request ran past its claim's lock and a retry with its key took it over: its change
    is rolled back, the retry's stands."""

    code = "idempotency_request_in_progress"
    title = "Request in progress"


async def _database_trouble_or_raise(
    exc: Exception, scope: Scope, receive: Receive, send: Send
) -> None:
    """Before the request ran: its 503 if the database failed, told that a retry runs it.
    Busy is not unreachable: a claim that waited out SQLite's busy timeout was told it may
    have been applied (a tester's)."""
    answer = database_trouble(Request(scope), exc)
    if answer is None:
        raise exc
    await answer(scope, receive, send)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key_bytes = headers.get(HEADER)
        token = headers.get(b"authorization", b"").partition(b" ")[2].strip()
        if key_bytes is None or not token or scope["path"].startswith(SIGNED_NOTIFICATIONS):
            await self.app(scope, receive, send)
            return
        key = key_bytes.decode("latin-1")
        if not 0 < len(key) <= MAX_KEY_LENGTH:
            response = problem(
                422, "validation_error", "Invalid request",
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} bytes",
                errors=[{"field": "Idempotency-Key", "message": "invalid length"}],
            )  # fmt: skip
            await response(scope, receive, send)
            return

        body = await read_body(receive)
        try:
            # A revoked or unknown key gets its 401 from the route, never a stored answer.
            await authenticate(headers[b"authorization"].decode("latin-1"))
        except Unauthorized:
            await self.app(scope, replay_body(body), send)
            return
        except Exception as exc:
            # Answered here, as the claim's below: raised on, the 503 came with a traceback
            # in the log (a re-verifier's, the database gone).
            await _database_trouble_or_raise(exc, scope, receive, send)
            return
        owner = hash_key(token.decode("latin-1"))
        fingerprint = hashlib.sha256(
            b"\n".join([scope["path"].encode(), scope.get("query_string", b""), canonical(body)])
        ).hexdigest()

        claim = secrets.token_hex(16)
        try:
            rejection = await _claim(owner, key, fingerprint, claim)
        except Exception as exc:
            await _database_trouble_or_raise(exc, scope, receive, send)
            return
        if rejection is not None:
            await _send_stored_or_problem(rejection, scope, receive, send)
            return

        held = _HeldResponse()
        created: list[str] = []

        async def mark_applied(session: AsyncSession) -> None:
            marked = await execute_counting(
                session,
                _APPLIED,
                {"owner": owner, "record_key": key, "held_claim": claim, "at": utc_now(),
                 "created": created[-1] if created else None},
            )  # fmt: skip
            if marked == 0:
                raise ClaimTakenOver(
                    f"this request ran past the Idempotency-Key's lock "
                    f"({get_settings().idempotency_lock_seconds} s) and a retry with the key took "
                    "it over; nothing of this request was applied: retry for the retry's answer"
                )

        # Reset after the request: a caller running requests in one context (a test's ASGI
        # client) would otherwise mark the next request's commit with this claim.
        marking = before_commit.set(mark_applied)
        naming = _created.set(created)

        async def hold_until_stored(message: Message) -> None:
            # The answer is stored before the client sees it, so a retry sent the moment the
            # first response arrives is replayed rather than told "in progress".
            if message["type"] == "http.response.start":
                held.start = message
                return
            if message["type"] == "http.response.body":
                held.chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                try:
                    await _finish(owner, key, claim, held, routed=_routed(scope, held.status))
                except Exception as exc:
                    if not _unreachable(exc):
                        raise
                    # The answer is known, only not kept: the client gets it (a retry is
                    # told the request was applied, 409 idempotency_answer_lost).
                    log.warning("the answer to Idempotency-Key %r was not stored: %s", key, exc)
                held.finished = True
                assert held.start is not None
                await send(held.start)
                await send({"type": "http.response.body", "body": b"".join(held.chunks)})
                return
            await send(message)

        try:
            await self.app(scope, replay_body(body), hold_until_stored)
        finally:
            before_commit.reset(marking)
            _created.reset(naming)
            if not held.finished:
                await _finish(owner, key, claim, held, routed=_routed(scope, held.status))


def _routed(scope: Scope, status: int) -> bool:
    """Whether a route answered, not the routing: a path no route has (404) or a method its
    route does not take (405) is no answer to the request the key is for. Stored, it refused
    the corrected request as a reuse of the key (a tester's, with ``POST /v1/loans/``).
    Starlette's router puts the matched route in the scope, this middleware's own."""
    return "route" in scope and status != 405


def _unreachable(exc: Exception) -> bool:
    """The key's record could not be read or written: the database went away or was busy."""
    return is_connection_lost(exc) or is_transient(exc) or isinstance(exc, PoolTimeout)


@dataclass
class _HeldResponse:
    start: Message | None = None
    chunks: list[bytes] = field(default_factory=list)
    finished: bool = False

    @property
    def status(self) -> int:
        return int(self.start["status"]) if self.start else 500

    def header(self, name: bytes) -> str | None:
        for key, value in self.start.get("headers", []) if self.start else []:
            if key.lower() == name:
                return bytes(value).decode("latin-1")
        return None

    @property
    def malformed(self) -> bool:
        """Refused for its shape (422 validation_error), which nothing was looked up for."""
        if self.status != 422:
            return False
        try:
            return bool(json.loads(b"".join(self.chunks)).get("code") == "validation_error")
        except ValueError:
            return False

    def stored_body(self) -> bytes:
        body = b"".join(self.chunks)
        if "no-store" in (self.header(b"cache-control") or ""):
            return without_secrets(body)
        return body


# Core statements on the table, built once: every POST claims and finishes a record, and
# ORM-enabled DML built per call adds construction, cache-key and session synchronisation work
# to each of them.
_records = cast(Table, IdempotencyRecord.__table__)
# The record while this request's claim holds it: once taken over, the request touches it no more.
_CLAIMED = (
    _records.c.scope == bindparam("owner"),
    _records.c.key == bindparam("record_key"),
    _records.c.claim == bindparam("held_claim"),
)
# A request that failed forgets its key, unless its change committed (then failed to answer):
# a retry is told so at once rather than run again.
_FORGET = delete(_records).where(*_CLAIMED, _records.c.applied_at.is_(None))
_ANSWER_LOST = update(_records).where(*_CLAIMED).values(locked_until=bindparam("now"))
_STORE = update(_records).where(*_CLAIMED)  # SET: the columns given at execution
_APPLIED = (
    update(_records)
    .where(*_CLAIMED)
    .values(applied_at=bindparam("at"), location=bindparam("created"))
)
_claims: dict[bool, Executable] = {}  # by dialect (is PostgreSQL)
AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def _claim_statement(postgres: bool) -> Executable:
    statement = _claims.get(postgres)
    if statement is None:
        insert = postgresql.insert if postgres else sqlite.insert
        statement = _claims[postgres] = insert(_records).on_conflict_do_nothing(
            index_elements=["scope", "key"]
        )
    return statement


async def _claim(
    owner: str, key: str, fingerprint: str, claim: str
) -> IdempotencyRecord | _AnswerLost | str | None:
    """Claim the key for this request. None: go ahead. A record: replay it. A string: the
    problem code to answer with (an applied request's lost answer: what it created)."""
    settings = get_settings()
    now = utc_now()
    lock = now + timedelta(seconds=settings.idempotency_lock_seconds)
    row = {
        "scope": owner, "key": key, "fingerprint": fingerprint, "created_at": now,
        "locked_until": lock, "claim": claim,
    }  # fmt: skip
    # The first request with a key (nearly every one): one statement on a bare connection. No
    # transaction (saves BEGIN and COMMIT round trips) and no ORM session (its set-up was
    # about a twentieth of an origination's CPU, bench/http_load.py).
    async with database.engine.connect() as connection:
        await connection.execution_options(**AUTOCOMMIT)
        insert = _claim_statement(connection.dialect.name == "postgresql")
        if _rowcount(await connection.execute(insert, row)) == 1:
            return None
    return await _claim_taken(owner, key, fingerprint, insert, row, now, lock)


async def _claim_taken(
    owner: str,
    key: str,
    fingerprint: str,
    claim: Executable,
    row: dict[str, Any],
    now: datetime,
    lock: datetime,
) -> IdempotencyRecord | _AnswerLost | str | None:
    """The key was taken: a replay, a reuse, a request in progress, or a claim to take over."""
    settings = get_settings()
    record_of = (_records.c.scope == owner, _records.c.key == key)
    async with database.sessions() as session, session.begin():
        # No transaction: each statement of these slow paths is safe alone (ON CONFLICT, the
        # takeover's WHERE).
        await session.connection(execution_options=AUTOCOMMIT)
        record = await session.get(IdempotencyRecord, (owner, key))
        expired = now - timedelta(hours=settings.idempotency_ttl_hours)
        if record is not None and record.created_at < expired:
            # Past retention (not yet purged): the key is free again.
            await session.delete(record)
            await session.flush()
            return (
                None
                if _rowcount(await session.execute(claim, row)) == 1
                else "idempotency_request_in_progress"
            )
        if record is None:
            return "idempotency_request_in_progress"
        running = (
            record.status_code is None
            and record.locked_until is not None
            and record.locked_until > now
        )
        if record.fingerprint != fingerprint:
            # Not final while the first runs: refused for its shape, it keeps no answer, and
            # the corrected request sent beside it runs once it is done (a re-verifier's).
            return "idempotency_request_in_progress" if running else "idempotency_key_reused"
        if record.status_code is not None:
            return record
        if running:
            return "idempotency_request_in_progress"
        if record.applied_at is not None:
            return _AnswerLost(record.location)
        # The request that claimed this key died, or is slow, without an answer and without
        # committing its change: take the claim over (a slow one then commits nothing). Not
        # one that committed since it was read: PostgreSQL checks the WHERE again after the
        # row lock its commit held.
        taken = await execute_counting(
            session,
            update(_records)
            .where(*record_of, _records.c.locked_until < now, _records.c.applied_at.is_(None))
            .values(locked_until=lock, claim=row["claim"]),
        )
        return None if taken == 1 else "idempotency_request_in_progress"


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


async def _finish(
    owner: str, key: str, claim: str, response: _HeldResponse, *, routed: bool
) -> None:
    record = {"owner": owner, "record_key": key, "held_claim": claim}
    async with database.engine.connect() as connection:
        # One statement: no transaction, no BEGIN and COMMIT round trips.
        await connection.execution_options(**AUTOCOMMIT)
        unstored = (
            response.status in UNSTORED_STATUSES
            or response.header(b"retry-after")
            # A POS that corrects a malformed request retries it under its key (Stripe keeps
            # no answer to a request that failed validation): refused as the key's reuse, it
            # needed a new key for a request that had done nothing (a tester's).
            or response.malformed
        )
        if unstored or not routed:
            if _rowcount(await connection.execute(_FORGET, record)) == 0:
                await connection.execute(_ANSWER_LOST, {**record, "now": utc_now()})
        else:
            await connection.execute(
                _STORE,
                {
                    **record,
                    "status_code": response.status,
                    "content_type": response.header(b"content-type"),
                    "cache_control": response.header(b"cache-control"),
                    "location": response.header(b"location"),
                    "body": response.stored_body(),
                    "locked_until": None,
                },
            )


async def _send_stored_or_problem(
    outcome: IdempotencyRecord | _AnswerLost | str, scope: Scope, receive: Receive, send: Send
) -> None:
    if isinstance(outcome, _AnswerLost):
        look = f"GET {outcome.location}" if outcome.location else "look up what it changed (GET)"
        response = problem(
            409, "idempotency_answer_lost", "Request applied, answer lost",
            "the request with this Idempotency-Key was applied, but its answer was lost (the "
            f"service failed as it answered); it is not run again: {look} instead of retrying",
            location=outcome.location,
        )  # fmt: skip
        await response(scope, receive, send)
        return
    if isinstance(outcome, str):
        if outcome == "idempotency_key_reused":
            response = problem(
                422, outcome, "Idempotency key reused",
                "this Idempotency-Key was used with a different request",
            )  # fmt: skip
        else:
            response = problem(
                409, outcome, "Request in progress",
                "a request with this Idempotency-Key is still being processed; retry later",
            )  # fmt: skip
        await response(scope, receive, send)
        return
    assert outcome.status_code is not None
    headers = [(b"idempotent-replayed", b"true")]
    if outcome.content_type:
        headers.append((b"content-type", outcome.content_type.encode("latin-1")))
    if outcome.cache_control:
        headers.append((b"cache-control", outcome.cache_control.encode("latin-1")))
    if outcome.location:
        headers.append((b"location", outcome.location.encode("latin-1")))
    body = outcome.body or b""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": outcome.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def without_secrets(body: bytes) -> bytes:
    """A response marked ``Cache-Control: no-store`` shows a secret once; its replay shows the
    rest of it with the secret left out."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return b""
    if isinstance(document, dict):
        for field in SECRET_FIELDS:
            if field in document:
                document[field] = None
    # Written as the response was (FastAPI's JSONResponse): the replay's bytes are the
    # original's but for the secret.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def canonical(body: bytes) -> bytes:
    """Bodies that differ only in key order or whitespace are the same request."""
    try:
        return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        return body


async def purge_expired(session: AsyncSession) -> int:
    """Forget keys older than the retention period (run hourly by the scheduler)."""
    cutoff = utc_now() - timedelta(hours=get_settings().idempotency_ttl_hours)
    return await execute_counting(
        session, delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
    )
