"""On-demand risk runs: the close's risk step over every chunk, as of the business date (after
new rules, say), then its grades step over every chunk, so borrowers' grades and credit limits
follow their loans' new flags at once. Idempotent like the steps themselves: a second run raises
nothing new and emits no event twice."""

import logging
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.api.auth import Principal
from app.api_keys.models import Role
from app.close import service as close_service
from app.close.service import Chunk
from app.config import get_settings
from app.db import session_scope, utc_now
from app.delinquency import service as delinquency
from app.errors import Conflict, InvalidRequest, NotFound
from app.ids import new_id
from app.queueing import require_broker, send
from app.risk import grades
from app.risk import service as risk
from app.risk.models import RiskRun
from app.risk.versions import current_rules

log = logging.getLogger("loanwatch.risk")


class RiskRunNotFound(NotFound):
    code = "risk_run_not_found"


class NotTheBusinessDate(Conflict):
    code = "as_of_not_business_date"
    title = "Not the business date"


async def start_run(principal: Principal, *, as_of: date) -> RiskRun:
    """Record the run and execute it: in this process on the embedded default, fanned out
    over the Celery workers otherwise, one task per chunk (the answer is then 202 with status
    pending)."""
    principal.require(Role.ADMIN)
    if as_of > clock.today():
        raise InvalidRequest.field("as_of", "must not be after today")
    if as_of < (earliest := clock.earliest()):
        raise InvalidRequest.field("as_of", f"must not be before {earliest}")
    celery = get_settings().uses_celery
    async with session_scope() as session:
        # Not beside a close: queued behind one, the run would find the business date moved
        # and fail in the workers.
        await close_service.serialize_close_requests(session)
        await close_service.refuse_concurrent(session)
        await _require_business_date(session, as_of)
        if celery:  # after the request's own checks; unreachable, nothing is stored
            await require_broker()
        version, _ = await current_rules(session)
        run = RiskRun(
            id=new_id("rrun"), as_of=as_of, status="pending", rules_version=version, counts={},
            chunks=0, created_at=utc_now(),
        )  # fmt: skip
        session.add(run)
    if celery:
        try:
            send("risk.run", [run.id])
        except Exception as exc:  # the broker went away since the ping
            await fail(run.id, exc)
            raise
        return run
    await execute(run.id)
    async with session_scope() as session:
        done = await session.get(RiskRun, run.id)
        assert done is not None
        return done


async def execute(run_id: str) -> None:
    """The whole run in this process, chunk after chunk (the embedded default)."""
    try:
        if (started := await begin(run_id)) is None:
            return
        as_of, bounds = started
        results = [await run_chunk(as_of, low, high) for low, high in bounds]
        results += [await grade_chunk(as_of, low, high) for low, high in bounds]
    except Exception as exc:
        log.exception("risk run %s failed", run_id)
        await fail(run_id, exc)
        return
    await finish(run_id, results, chunks=len(bounds))


async def begin(run_id: str) -> tuple[date, list[Chunk]] | None:
    """Mark the run running; its chunks are the close's loan-id ranges. None when it has
    finished: a start the broker handed back ran a finished run again, and failed it once the
    business date had moved. A running one starts again: its start may be the one a killed
    worker left, handed back (its evaluation is idempotent; it had stayed running for good)."""
    async with session_scope() as session:
        run = await session.get(RiskRun, run_id, with_for_update=True)
        assert run is not None
        if run.status in ("succeeded", "failed"):
            log.warning("risk run %s is %s: not started again", run_id, run.status)
            return None
        run.status, run.started_at = "running", utc_now()
        as_of = run.as_of
    return as_of, await close_service.chunks("risk")


async def run_chunk(as_of: date, low: str | None, high: str | None) -> dict[str, int]:
    """One chunk, in its own transaction, its loans locked as in the close (payments wait).
    A close may have moved the business date since the run was asked for (a queued Celery
    run, or one chunk after another): the chunk then fails rather than re-evaluate the live
    flags as of a date the loans no longer stand at."""
    async with session_scope() as session:
        await delinquency.lock_chunk(session, low, high)
        await _require_business_date(session, as_of)
        return await risk.evaluate_loans(session, as_of, low, high)


async def grade_chunk(as_of: date, low: str | None, high: str | None) -> dict[str, int]:
    """Re-grade the borrowers of one chunk's loans, once every chunk's flags are in: a
    borrower's grade is their worst loan's, and their loans may lie in other chunks."""
    async with session_scope() as session:
        await delinquency.lock_chunk(session, low, high)
        await _require_business_date(session, as_of)
        return await grades.grade_borrowers(session, as_of, low, high)


async def _require_business_date(session: AsyncSession, as_of: date) -> None:
    # The flags are live: evaluated as of any other date than the one the loans' days past
    # due stand at, they would clear on loans still in arrears, or raise for days the close
    # has not reached.
    business_date = await delinquency.delinquency_date(session)
    if as_of != business_date:
        raise NotTheBusinessDate(
            f"risk runs are as of the business date, {business_date}; close a later date to move it"
        )


async def finish(
    run_id: str, results: list[dict[str, int]], *, chunks: int, error: str | None = None
) -> None:
    """Record the run's end: ``results`` holds the counts of every chunk of both passes."""
    totals = close_service.add_counts(results)
    async with session_scope() as session:
        run = await session.get(RiskRun, run_id, with_for_update=True)
        assert run is not None
        if run.status in ("succeeded", "failed"):  # a callback handed back: recorded already
            log.warning("risk run %s is %s already", run_id, run.status)
            return
        run.status, run.error = ("failed", error[:2000]) if error else ("succeeded", None)
        run.counts, run.chunks, run.finished_at = totals, chunks, utc_now()
        if run.started_at is not None:
            run.seconds = round((run.finished_at - run.started_at).total_seconds(), 3)


async def fail(run_id: str, exc: BaseException) -> None:
    """Record the run as failed, with what stopped it."""
    await finish(run_id, [], chunks=0, error=f"{type(exc).__name__}: {exc}")


async def get_run(session: AsyncSession, principal: Principal, *, run_id: str) -> RiskRun:
    principal.require(Role.DASHBOARD)
    run = await session.get(RiskRun, run_id)
    if run is None:
        raise RiskRunNotFound(f"risk run {run_id} does not exist")
    return run
