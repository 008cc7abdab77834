"""The nightly close: for a business date D, assess late fees, recompute delinquency and send
reminders over every loan, chunk by chunk; catch up every missed date in order.

Each step is idempotent (a fee is assessed once per installment, a reminder sent once, an event
only on a change), and each chunk commits on its own, so a crashed close is simply run again.
The same functions serve the in-process runner (embedded default, CLI) and the Celery tasks
that fan chunks out across workers (workers/tasks/close.py).
"""

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar, cast

from sqlalchemy import Integer, Row, Table, and_, bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.api.auth import Principal
from app.api_keys.models import Role
from app.borrowers.models import Borrower
from app.close.errors import (
    CloseCatchUpTooLong,
    CloseDateInFuture,
    CloseDateInPast,
    CloseInProgress,
    CloseRunNotFound,
)
from app.close.models import CloseRun, CloseStatus, FeeReplayDue
from app.config import get_settings
from app.db import (
    database,
    is_connection_lost,
    is_postgres,
    session_scope,
    to_the_end,
    utc_now,
    utc_text,
)
from app.delinquency import service as delinquency
from app.errors import InvalidRequest
from app.events import service as events
from app.loans.models import OPEN_STATUSES, Loan
from app.ops import processes
from app.payments import service as payments
from app.portfolio import close as portfolio
from app.promises import service as promises
from app.queueing import BrokerUnavailable, require_broker, send
from app.risk import grades as risk_grades
from app.risk import service as risk
from app.risk.models import RiskFlag

log = logging.getLogger("loanwatch.close")

StepFunction = Callable[[AsyncSession, date, str | None, str | None], Awaitable[dict[str, int]]]
Chunk = tuple[str | None, str | None]
T = TypeVar("T")


async def assess_late_fees(
    session: AsyncSession, as_of: date, low: str | None, high: str | None
) -> dict[str, int]:
    """The fee step: the fees of the date, then the replay of the loans a payment received on
    or after a fee's date has already paid, so that payment pays the new fee first; then the
    fees' events, with the principal the replay left.

    A close that charges a loan the fees of several graces (a back-dated book's first) charges
    each on its own night, as closes run each night would have, in one statement: whether an
    installment is late, and by how much, does not depend on the older fees (what the payments
    fell short of the installments due, late fees aside), so the replay that has the payments
    pay them first changes no fee; but for a loan it opens again, judged again after it."""
    fees = await delinquency.charge_late_fees(session, as_of, low, high)
    await delinquency.book_late_fees(session, fees)
    oldest: dict[str, date] = {}
    for fee in fees:
        oldest[fee.loan_id] = min(oldest.get(fee.loan_id, date.max), fee.late_fee_assessed_on)
    paid = await payments.paid_since(session, oldest)
    due = await _take_fee_replays_due(session, low, high)
    replayed = await payments.replay_after_fees(session, sorted({*paid, *due}), as_of)
    withdrawn = replayed.withdrawn
    # A loan open again owes the interest its payoff had forgiven: an installment the payoff
    # had settled in time may now fall short by its grace, and is judged again, as a twin
    # that met each night's close was (a re-verifier's: its last fee missing).
    judge_again = sorted(event["loan_id"] for event in replayed.reopened)
    while judge_again:
        more = await delinquency.charge_late_fees(session, as_of, low, high, judge_again)
        await delinquency.book_late_fees(session, more)
        judge_again = sorted({fee.loan_id for fee in more})
        withdrawn += (await payments.replay_after_fees(session, judge_again, as_of)).withdrawn
        fees = sorted([*fees, *more], key=lambda fee: (fee.loan_id, fee.seq))
    counts = await delinquency.announce_late_fees(session, fees, as_of)
    # After the fees that reopened them: a subscriber reads why before the move.
    await events.emit_many(session, replayed.reopened)
    return {**counts, "late_fees_withdrawn": withdrawn,
            "delinquency_changes": len(replayed.reopened)}  # fmt: skip


async def _take_fee_replays_due(
    session: AsyncSession, low: str | None, high: str | None
) -> list[str]:
    """The open loans of the range an upgrade left to replay once (``FeeReplayDue``), taken
    off the list: the chunk holds their locks (one paid off or cancelled since needs none)."""
    in_range = delinquency.in_range(FeeReplayDue.loan_id, low, high)
    due = await session.scalars(
        select(FeeReplayDue.loan_id)
        .join(Loan, Loan.id == FeeReplayDue.loan_id)
        .where(in_range, Loan.status.in_(OPEN_STATUSES))
    )
    loan_ids = list(due)
    await session.execute(delete(FeeReplayDue).where(in_range))
    return loan_ids


async def grade_borrowers(
    session: AsyncSession, as_of: date, low: str | None, high: str | None
) -> dict[str, int]:
    """The grades step: on a rerun of the date, limits stay where its first run and what came
    since put them. A rerun after a payment since restated the fall the payment had lifted,
    and cut the limit once more, to the exposure the payment left, or ended an admin's
    override set since (a re-verifier's each)."""
    rerun = await session.scalar(select(CloseRun.succeeded_at).where(CloseRun.as_of == as_of))
    return await risk_grades.grade_borrowers(session, as_of, low, high, move_limits=rerun is None)


# In order: fees first, so a fee assessed today counts in today's arrears; the risk engine
# after delinquency, so its rules see today's days past due.
STEPS: dict[str, StepFunction] = {
    "late_fees": assess_late_fees,
    "delinquency": delinquency.recompute_delinquency,
    "promises": promises.close_promises,
    "risk": risk.evaluate_overnight,
    "grades": grade_borrowers,
    "reminders": delinquency.send_reminders,
    "snapshot": portfolio.snapshot_loans,
    "portfolio": portfolio.close_portfolio,
}
# Steps over the whole book at once, in one transaction and without locking the loans.
WHOLE_BOOK_STEPS = frozenset({"portfolio"})


async def request_close(principal: Principal, *, as_of: date) -> tuple[CloseRun, list[date]]:
    """Close ``as_of`` (and every missed date before it): in this process on the embedded
    default, on the Celery workers otherwise. Returns the run for ``as_of`` and the dates
    the request closes, oldest first."""
    principal.require(Role.ADMIN)
    celery = get_settings().uses_celery
    async with session_scope() as session:
        dates = await plan_close(session, as_of=as_of)
        if celery:  # after the request's own checks; unreachable, the plan rolls back
            await require_broker()
            # Queued before the plan commits, so a failed send leaves every run as it was
            # (a rerun of the business date marked failed would set the date back a day);
            # a worker that takes the task first waits for the commit in begin_run.
            try:
                enqueue(dates)
            except Exception as exc:  # the broker went away since the ping
                raise BrokerUnavailable(
                    f"the task queue refused the close ({type(exc).__name__}); nothing was "
                    "stored, retry the request"
                ) from exc
    finished = None
    if not celery:
        # Cancelled by a stopping server, the run is recorded failed and the request answered
        # 503 service_stopping (app/api/stopping.py).
        try:
            finished = await run_dates_in_process(dates)
        except Exception:
            pass
    if finished is not None:
        # As it succeeded: read back, it could be another request's rerun, planned since.
        return finished, dates
    async with session_scope() as session:
        run = await session.get(CloseRun, as_of)
        assert run is not None
        return run, dates


# What a stop of this process writes on the runs it cut short (run_dates_in_process), which a
# start closes again.
CANCELLED_BY_A_STOP = "cancelled: the process stopped"
NOT_STARTED_FOR_A_STOP = "not started: the process stopped"
# What a start or a request writes on a run whose process ended without a word (killed).
ENDED_UNDER_IT = "cancelled: the process running it ended"
_STOPPED = and_(
    CloseRun.status == CloseStatus.FAILED,
    CloseRun.error.in_((CANCELLED_BY_A_STOP, NOT_STARTED_FOR_A_STOP, ENDED_UNDER_IT)),
)


async def close_yesterday() -> list[date]:
    """The scheduled close: the day that just ended, after any day missed before it; of a
    backlog longer than a request may close, the oldest dates it may (the next night goes on:
    asked for the day that ended, it was refused every night, and the closes stopped for good,
    a tester's)."""
    as_of = clock.today() - timedelta(days=1)
    async with session_scope() as session:
        last = await delinquency.business_date(session)
        if last is not None and last >= as_of:
            return []
        if last is not None:
            as_of = min(as_of, last + timedelta(days=get_settings().close.max_dates_per_request))
        dates = await plan_close(session, as_of=as_of)
    return dates


def enqueue(dates: list[date]) -> None:
    """Hand the dates to the Celery workers (inside the planning transaction: begin_run
    waits for its commit)."""
    send("close.run_dates", [[d.isoformat() for d in dates]])


def refuse_unclosable(as_of: date) -> None:
    """A date no close can be for, whatever the book: one not yet begun, or too far back."""
    today = clock.today()
    if as_of > today:
        raise CloseDateInFuture.field("as_of", f"{as_of} has not begun yet (today is {today})")
    if as_of < (earliest := clock.earliest()):
        raise InvalidRequest.field("as_of", f"must not be before {earliest}")


async def plan_close(session: AsyncSession, *, as_of: date) -> list[date]:
    """The dates a request to close ``as_of`` runs, oldest first: every date missed since the
    business date, then ``as_of``. Marks their runs pending."""
    refuse_unclosable(as_of)
    await serialize_close_requests(session)
    last = await delinquency.business_date(session)
    if last is not None and as_of < last:
        raise CloseDateInPast(f"the business date is already {last}; {as_of} cannot be closed")
    if last is None:
        evaluated = await _refuse_closing_before_evaluated(session, as_of)
        # The first close a stop cut short is still the book's first date: a later one runs
        # it and the dates after it. Closing only the later date, the restart's scheduled
        # close left it unclosed, and then before the business date for good (a tester's).
        first = await session.scalar(select(func.min(CloseRun.as_of)).where(_STOPPED))
        if first is not None and first < as_of and (evaluated is None or first >= evaluated):
            last = first - timedelta(days=1)
    await refuse_concurrent(session)
    if last is None or as_of == last:
        dates = [as_of]
    else:
        dates = [last + timedelta(days=n) for n in range(1, (as_of - last).days + 1)]
    limit = get_settings().close.max_dates_per_request
    if len(dates) > limit:
        raise CloseCatchUpTooLong.field(
            "as_of",
            f"closing {as_of} would close {len(dates)} dates from {dates[0]}; close at most "
            f"{limit} at a time (first up to {dates[limit - 1]})",
        )
    for day in dates:
        run = await session.get(CloseRun, day, with_for_update=True)
        if run is None:
            session.add(CloseRun(as_of=day, status=CloseStatus.PENDING, counts={}, steps={},
                                 attempts=0, heartbeat_at=utc_now()))  # fmt: skip
        else:
            # Queued again: the last attempt's end and timings no longer describe it.
            run.status, run.error, run.heartbeat_at = CloseStatus.PENDING, None, utc_now()
            run.finished_at, run.steps = None, {}
    return dates


async def _refuse_closing_before_evaluated(session: AsyncSession, as_of: date) -> date | None:
    """Before any close, a payment, reversal, failed debit or risk run evaluates its loans'
    flags, grades and limits as of today. A first close for an earlier date would clear those
    flags on a day before they were raised, and weigh them as if still to come: it is refused,
    as a date before the last close is. The date they were evaluated as of, if any."""
    flagged_on = await session.scalar(select(func.max(RiskFlag.raised_on)))
    limit_moved_on = await session.scalar(select(func.max(Borrower.limit_changed_on)))
    evaluated = max((d for d in (flagged_on, limit_moved_on) if d is not None), default=None)
    if evaluated is not None and as_of < evaluated:
        raise CloseDateInPast(
            f"the book's risk was already evaluated as of {evaluated} (before any close, "
            f"payments and risk runs evaluate as of today); the first close cannot be for "
            f"{as_of}: close {evaluated} or later"
        )
    return evaluated


# Requests to close (and risk runs, which must not meet a close) take this lock in turn, so
# each sees what the one before it stored: two that both found no close in progress each
# queued one, whose steps collided, failed the close and set the business date back a day.
_CLOSE_REQUESTS_LOCK = text("SELECT pg_advisory_xact_lock(7411263)")


async def serialize_close_requests(session: AsyncSession) -> None:
    """Until the caller's transaction ends (SQLite writes one transaction at a time)."""
    if is_postgres(session):
        await session.execute(_CLOSE_REQUESTS_LOCK)


_IN_PROGRESS = select(
    select(func.min(CloseRun.as_of))
    .where(CloseRun.status.in_((CloseStatus.RUNNING, CloseStatus.PENDING)))
    .scalar_subquery(),
    select(func.max(CloseRun.heartbeat_at)).scalar_subquery(),
)


async def refuse_concurrent(session: AsyncSession) -> None:
    """409 while a close is pending or running, unless it stopped beating (a dead worker).
    A catch-up beats as a whole: its dates still queued keep the beat of their planning, and
    between one date's end and the next one's start no date runs, so the freshest beat of any
    date tells whether it is alive (a tester's: a request during a catch-up longer than the
    stale time found its queued dates stale, planned them again beside it, and the two
    collided)."""
    await fail_runs_whose_process_ended(session)
    busy, last_beat = (await session.execute(_IN_PROGRESS)).one()
    stale_after = timedelta(minutes=get_settings().close.stale_after_minutes)
    if busy is not None and last_beat is not None and last_beat > utc_now() - stale_after:
        # The oldest, the date running or next to run. When it may be closed again, if it
        # has died: an operator could not tell a live close from a dead worker's (a tester's).
        last, stale = (utc_text(moment.replace(microsecond=0)) for moment in
                       (last_beat, last_beat + stale_after))  # fmt: skip
        raise CloseInProgress(
            f"the close for {busy} is still running (its last heartbeat at {last}; if it "
            f"beats no more, taken for crashed from {stale}, and a close possible again)"
        )


async def fail_runs_whose_process_ended(session: AsyncSession) -> None:
    """Fail the runs left running by a process of this machine that has ended (killed
    outright: a stop records its own), and the dates of its catch-up still waiting, as a stop
    would have: a request may close them at once, and the embedded default's next start
    closes them again. Left, they refused every request to close until they went stale, 30
    minutes on, and nothing resumed them (a tester's)."""
    running = await session.execute(
        select(CloseRun.as_of, CloseRun.owner).where(
            CloseRun.status == CloseStatus.RUNNING, CloseRun.owner.is_not(None)
        )
    )
    now = utc_now()
    for as_of, owner in running.all():
        if owner is None or not processes.ended(owner):
            continue
        log.warning("close %s: the process running it (%s) ended; failed", as_of, owner)
        await session.execute(
            update(_run)
            .where(_run.c.as_of == as_of, _run.c.status == CloseStatus.RUNNING,
                   _run.c.owner == owner)
            .values(status=CloseStatus.FAILED, error=ENDED_UNDER_IT, finished_at=now)
        )  # fmt: skip
        await session.execute(
            _PENDING_FROM,
            {"first": as_of + timedelta(days=1), "at": now, "reason": NOT_STARTED_FOR_A_STOP},
        )


async def get_run(session: AsyncSession, principal: Principal, *, as_of: date) -> CloseRun:
    principal.require(Role.DASHBOARD)
    run = await session.get(CloseRun, as_of)
    if run is None:
        raise CloseRunNotFound(f"no close has run for {as_of}")
    return run


async def latest_run(session: AsyncSession) -> CloseRun | None:
    return await session.scalar(select(CloseRun).order_by(CloseRun.as_of.desc()).limit(1))


# -- the pieces both runners compose -----------------------------------------------------


_numbered = select(Loan.id, func.row_number().over(order_by=Loan.id).label("n")).subquery()
_CHUNK_STARTS = (
    select(_numbered.c.id)
    .where((_numbered.c.n - 1) % bindparam("chunk_size", type_=Integer) == 0)
    .order_by(_numbered.c.id)
)


async def chunks(step: str | None = None) -> list[Chunk]:
    """Loan-id ranges of about ``chunk_size`` loans each; together they cover every loan."""
    if step in WHOLE_BOOK_STEPS:
        return [(None, None)]
    async with session_scope() as session:
        starts = list(
            await session.scalars(_CHUNK_STARTS, {"chunk_size": get_settings().close.chunk_size})
        )
    if not starts:
        return [(None, None)]
    ends: list[str | None] = [*starts[1:], None]
    return [
        (None if n == 0 else start, end)
        for n, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]


async def begin_run(as_of: date, owner: str | None = None) -> int | None:
    """Start a pending run: its new attempt number, which every later piece of the attempt
    carries. None when the run is not pending (a start the broker redelivered after a
    worker died, for a date closed since or started by another): nothing to do. ``owner``:
    the process running it in process (``processes.this_process()``)."""
    async with session_scope() as session:
        # The request that queued the task may not have committed its plan yet.
        await serialize_close_requests(session)
        run = await session.get(CloseRun, as_of, with_for_update=True)
        if run is None or run.status != CloseStatus.PENDING:
            log.warning("close %s is %s: not started again", as_of, run and run.status)
            return None
        now = utc_now()
        run.status, run.started_at, run.finished_at = CloseStatus.RUNNING, now, None
        run.heartbeat_at, run.attempts, run.error = now, run.attempts + 1, None
        run.owner = owner
        # The steps' timings are this attempt's; the counts stay the date's (finish_step).
        run.steps = {}
        attempt = run.attempts
    # The close's plans need the book's size: a bulk load may not be analysed yet.
    await database.analyse_stale_tables()
    return attempt


# The run's row in the steps of an attempt, read and written in Core: loading and flushing the
# ORM object was a large part of the CPU of closing a date of a small book.
_run = cast(Table, CloseRun.__table__)
# Not "as_of": a column's name is reserved for the values of an update.
_THIS_RUN = _run.c.as_of == bindparam("run_as_of")
_RUN_ROW = select(_run.c.attempts, _run.c.status, _run.c.steps, _run.c.counts).where(_THIS_RUN)
_RUN_LOCKED, _RUN_SHARED = (
    _RUN_ROW.with_for_update(),
    _RUN_ROW.with_for_update(read=True, key_share=True),
)


async def _current(
    session: AsyncSession, as_of: date, attempt: int, *, share: bool
) -> Row[Any, Any, Any, Any] | None:
    """The run's steps and counts, if ``attempt`` is its running attempt, its row locked
    against a new start (shared, for a chunk, so chunks and heartbeats go on beside each
    other). A piece of an attempt since replaced (a rerun after the run went stale, and the
    broker redelivering the dead attempt's tasks an hour later) does nothing: run again, it
    would close its date over a book that later dates have moved on."""
    run = (
        await session.execute(_RUN_SHARED if share else _RUN_LOCKED, {"run_as_of": as_of})
    ).first()
    if run is None or (run.attempts, run.status) != (attempt, CloseStatus.RUNNING):
        log.warning("close %s attempt %s is over: skipped", as_of, attempt)
        return None
    return run


@lru_cache(maxsize=16)
def _run_update(columns: tuple[str, ...]) -> Any:
    return update(_run).where(_THIS_RUN).values({c: bindparam(f"new_{c}") for c in columns})


async def _update_run(session: AsyncSession, as_of: date, **values: Any) -> None:
    params = {f"new_{column}": value for column, value in values.items()}
    await session.execute(_run_update(tuple(values)), {"run_as_of": as_of, **params})


async def begin_step(as_of: date, step: str, chunk_count: int, attempt: int) -> bool:
    """Record the step begun; False when ``attempt`` is over or began it already."""
    async with session_scope() as session:
        if (run := await _current(session, as_of, attempt, share=False)) is None:
            return False
        if step in run.steps:  # this attempt's steps only (begin_run clears them)
            log.warning("close %s attempt %s began %s already: not again", as_of, attempt, step)
            return False
        now = utc_now()
        # Z, as every other instant the API writes (it wrote +00:00 here: a tester's).
        started = {"started_at": utc_text(now), "chunks": chunk_count, "status": "running"}
        await _update_run(session, as_of, steps={**run.steps, step: started}, heartbeat_at=now)
    return True


async def run_chunk(
    step: str,
    as_of: date,
    low: str | None,
    high: str | None,
    attempt: int | None = None,
    *,
    beat: bool = True,
) -> dict[str, int]:
    """One step over one loan-id range, in its own transaction; of ``attempt`` of the run
    (None: unchecked, a caller that holds the run itself). Then the run's heartbeat, unless
    ``beat`` is False: a caller that records the run at once (the step's last chunk in
    process) beats then."""
    async with session_scope() as session:
        if step in WHOLE_BOOK_STEPS and is_postgres(session):
            # One snapshot of the whole book (portfolio.positions.rebase): set before the
            # transaction's first statement, the attempt check's included, or it is ignored.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        if attempt is not None and await _current(session, as_of, attempt, share=True) is None:
            return {}
        if step not in WHOLE_BOOK_STEPS:
            await delinquency.lock_chunk(session, low, high)
        counts = await STEPS[step](session, as_of, low, high)
    if beat:
        try:
            async with session_scope() as session:
                await _update_run(session, as_of, heartbeat_at=utc_now())
        except Exception as exc:
            # The chunk committed: a heartbeat lost with the database is skipped, not the
            # chunk run again, whose second run counts nothing (a re-verifier's: a cut there
            # left the step's counts short of what it did). The next chunk beats.
            if not is_connection_lost(exc):
                raise
            log.warning("close %s: a heartbeat lost the database: %s", as_of, exc)
    return counts


def add_counts(results: list[dict[str, int]]) -> dict[str, int]:
    """The chunks' counts added up by name."""
    totals: dict[str, int] = {}
    for counts in results:
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + value
    return totals


async def finish_step(as_of: date, step: str, results: list[dict[str, int]], attempt: int) -> bool:
    """Record the step; False when ``attempt`` is over or recorded it already (its next step
    must not start)."""
    totals = add_counts(results)
    async with session_scope() as session:
        if (run := await _current(session, as_of, attempt, share=False)) is None:
            return False
        entry: dict[str, Any] = dict(run.steps.get(step, {}))
        # The broker hands a step's callback back when the worker's connection drops before
        # its late acknowledgement: run twice, it counted the step twice and started every
        # later step twice, chords racing each other (a tester's).
        if entry.get("status") != "running":
            log.warning("close %s attempt %s recorded %s already", as_of, attempt, step)
            return False
        finished = utc_now()
        started = entry.get("started_at")
        entry.update(status="succeeded", finished_at=utc_text(finished), counts=totals)
        if started:
            entry["seconds"] = round(
                (finished - datetime.fromisoformat(started)).total_seconds(), 3
            )
        # Added to what earlier attempts counted, as the chunks' are: a rerun that changes
        # nothing adds zeros instead of erasing the record of what the date's close did, and
        # one after a crash keeps what the crashed attempt's finished steps did.
        counts = add_counts([run.counts, totals])
        await _update_run(session, as_of, steps={**run.steps, step: entry}, counts=counts,
                          heartbeat_at=finished)  # fmt: skip
    return True


async def finish_run(as_of: date, attempt: int) -> CloseRun | None:
    """Mark the run succeeded, and return it so; None when ``attempt`` is over."""
    async with session_scope() as session:
        if await _current(session, as_of, attempt, share=False) is None:
            return None
        now = utc_now()
        await _update_run(session, as_of, status=CloseStatus.SUCCEEDED, finished_at=now,
                          heartbeat_at=now, succeeded_at=now)  # fmt: skip
        return await session.get(CloseRun, as_of, populate_existing=True)


_PENDING_FROM = (
    update(_run)
    .where(_run.c.as_of >= bindparam("first"), _run.c.status == CloseStatus.PENDING)
    .values(status=CloseStatus.FAILED, error=bindparam("reason"), finished_at=bindparam("at"))
)


async def fail_run(as_of: date, error: str, attempt: int, *, later: str | None = None) -> None:
    """Mark the attempt failed, unless it has been replaced; and the later dates of its
    catch-up, which will not start (with ``later`` as their error, or one naming this date):
    left pending, they answered every request to close 409 until they went stale, 30 minutes
    on (a tester's, after a broker outage of 20 s)."""
    async with session_scope() as session:
        if (run := await _current(session, as_of, attempt, share=False)) is not None:
            now = utc_now()
            # The step the failure cut short failed with it: its record read "running" in a
            # run that had failed (a tester's, a stop during the grades step).
            failed = {"status": "failed", "finished_at": utc_text(now)}
            steps = {
                name: {**entry, **failed} if entry.get("status") == "running" else entry
                for name, entry in run.steps.items()
            }
            await _update_run(session, as_of, status=CloseStatus.FAILED, error=error[:2000],
                              finished_at=now, steps=steps)  # fmt: skip
            reason = later or f"not started: the close of {as_of}, before it, failed"
            await session.execute(
                _PENDING_FROM, {"first": as_of + timedelta(days=1), "at": now, "reason": reason}
            )


# The dates a stop cut short that are still not closed.
_CUT_SHORT = select(CloseRun.as_of).where(
    _STOPPED, CloseRun.as_of > func.coalesce(delinquency.business_date_column(), date.min)
)


async def cut_short_by_a_stop() -> bool:
    """Whether a date a stop of the service cut short is still not closed: the embedded
    default's scheduler closes it as the service starts again, rather than leave the book a
    day behind until the next night. A close that failed of itself is left to a request or
    the next night: run at every start, it could fail at every start."""
    async with session_scope() as session:
        await serialize_close_requests(session)
        await fail_runs_whose_process_ended(session)
        return await session.scalar(_CUT_SHORT.limit(1)) is not None


async def _fail_pending(first: date, error: str) -> None:
    """Fail the dates from ``first`` still waiting to start: left pending, they answered
    every request to close 409 until they went stale."""
    async with session_scope() as session:
        await session.execute(_PENDING_FROM, {"first": first, "at": utc_now(), "reason": error})


# -- the in-process runner (embedded default, CLI, tests) --------------------------------


async def _close_date(as_of: date, attempt: int) -> CloseRun:
    # The ranges cover every loan id, whatever is originated meanwhile: one list serves every
    # chunked step of the date.
    loan_ranges = await chunks()
    for step in STEPS:
        bounds = await chunks(step) if step in WHOLE_BOOK_STEPS else loan_ranges
        if not await begin_step(as_of, step, len(bounds), attempt):
            raise CloseInProgress(f"the close for {as_of} was taken over")
        last = len(bounds) - 1
        results = [
            await run_chunk(step, as_of, low, high, beat=n < last)
            for n, (low, high) in enumerate(bounds)
        ]
        if not await finish_step(as_of, step, results, attempt):
            raise CloseInProgress(f"the close for {as_of} was taken over")
    if (finished := await finish_run(as_of, attempt)) is None:
        raise CloseInProgress(f"the close for {as_of} was taken over")
    return finished


# The in-process closes running (a request's, the scheduler's): a stopping service cancels
# them and waits for their runs to be recorded before it lets the database go.
_running_here: set["asyncio.Task[Any]"] = set()


async def stop_closes_in_process(wait_seconds: float) -> None:
    """Cancel the closes running in this process and wait up to ``wait_seconds`` for their
    runs to be recorded failed (a second cancellation, the server's of a request still
    running after its grace, does not cut that record short: ``to_the_end``)."""
    running = [task for task in _running_here if not task.done()]
    for task in running:
        # A request's close the stop has cancelled already is still cleaning up (a statement
        # SQLite is finishing, then the rollback): cancelled again, its rollback could be cut
        # short. It is waited for. (The pool's traceback CI saw now and then came from a
        # cancellation as a transaction committed: db.commit_to_the_end.)
        if not task.cancelling():
            task.cancel()
    if running:
        await asyncio.wait(running, timeout=wait_seconds)


async def run_dates_in_process(dates: list[date]) -> CloseRun | None:
    """Close each date in order, every step over every chunk, in this process; the last
    date's run as it succeeded (None with no dates)."""
    task = asyncio.current_task()
    assert task is not None
    _running_here.add(task)
    try:
        return await _run_dates(dates)
    finally:
        _running_here.discard(task)


async def _run_dates(dates: list[date]) -> CloseRun | None:
    # The date being started or closed, and its attempt once started.
    current: date | None = None
    attempt: int | None = None
    finished: CloseRun | None = None
    cancelled = False
    try:
        for as_of in dates:
            current, attempt = as_of, None
            attempt, stopped = await to_the_end(begin_run(as_of, processes.this_process()))
            if stopped:
                raise asyncio.CancelledError
            if attempt is None:
                raise CloseInProgress(f"the close for {as_of} was started by another")
            try:
                finished = await _close_date(as_of, attempt)
            except Exception as exc:
                await fail_run(as_of, f"{type(exc).__name__}: {exc}", attempt)
                raise
    except asyncio.CancelledError:
        cancelled = True
    if cancelled:
        # The process is stopping (the embedded default's scheduler cancels its close): left
        # running or pending, the runs refused every request to close 409 until they went
        # stale, 30 minutes on (a tester's). Recorded, a request may rerun them at once.
        # Recorded out of the except block and after a collection: on SQLite the statement
        # the cancellation cut short, kept in a reference cycle by its traceback, held the
        # abandoned connection open and its write lock with it, so the record waited out the
        # busy timeout and failed (a tester's, 6 stops of 8).
        gc.collect()
        if current is not None and attempt is not None:
            await to_the_end(
                fail_run(current, CANCELLED_BY_A_STOP, attempt, later=NOT_STARTED_FOR_A_STOP)
            )
        elif current is not None:  # its start found it taken: the dates after it
            await to_the_end(_fail_pending(current, NOT_STARTED_FOR_A_STOP))
        raise asyncio.CancelledError
    await database.refresh_statistics()
    return finished
