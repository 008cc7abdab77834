"""The nightly close on Celery: each step's chunks fan out as a chord over the workers; the
chord's callback records the step and starts the next one, then the next missed date.

Nothing here blocks a worker waiting for others, so N workers share one close. Every chunk is
idempotent, so a chunk redelivered after a worker died does no harm; and every task carries
its run's attempt number, so one the broker hands back after that attempt was replaced (a
rerun once the run went stale) does nothing (`close_service.begin_run`, `_current`).

A database lost for a moment (a restart, a failover, a network cut) is waited out: a task
that lost it before it changed anything (a run's start, a chunk, a step's record) runs again
once the database is back, and a failure is recorded once it can be. Before, the task raised
and the run stayed `running`, with no error, refusing every close 409 for the stale time (a
tester's, the database cut for seconds).
"""

import logging
from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar

from celery import chord

from app.close import service as close_service
from app.close.errors import CloseInProgress
from app.config import get_settings
from app.db import is_connection_lost
from workers import runtime
from workers.celery_app import celery

STEP_NAMES = list(close_service.STEPS)
T = TypeVar("T")

log = logging.getLogger("loanwatch.close")

# Waits of 2, 4, 8 ... then 60 s: about 15 minutes in all, past the stale time (10), after which
# a request to close starts a new attempt anyway.
_WAITS_FOR_THE_DATABASE = 20


def _again_when_the_database_is_back(task: Any, exc: Exception) -> None:
    """Raise Celery's retry of ``task`` if ``exc`` is the database lost or refused and it may
    wait longer; else return, for the caller to record the failure or raise ``exc``."""
    if is_connection_lost(exc) and task.request.retries < _WAITS_FOR_THE_DATABASE:
        log.warning("%s lost the database (%s): again shortly", task.name, exc)
        countdown = min(60, 2 ** (task.request.retries + 1))
        raise task.retry(exc=exc, countdown=countdown, max_retries=_WAITS_FOR_THE_DATABASE)


def _or_fail_the_run(task: Any, as_of: str, attempt: int, work: Callable[[], T]) -> T:
    """``work``'s result; on the database lost, ``task`` again shortly; on any other failure
    (or the database away too long), the attempt recorded failed, then the error raised."""
    try:
        return work()
    except Exception as exc:
        _again_when_the_database_is_back(task, exc)
        record_failure.delay(as_of, f"{type(exc).__name__}: {exc}", attempt)
        raise


@celery.task(name="close.nightly", acks_late=True, bind=True)
def nightly(self: Any) -> list[str]:
    """Close the day that just ended (beat, at the configured local time); while a manual
    close runs, try again until it is done."""
    try:
        dates = [d.isoformat() for d in runtime.run(close_service.close_yesterday())]
    except CloseInProgress as exc:
        settings = get_settings().close
        log.info("nightly close waits: %s", exc)
        raise self.retry(
            countdown=settings.nightly_retry_seconds, max_retries=settings.nightly_retries
        ) from None
    except Exception as exc:
        _again_when_the_database_is_back(self, exc)
        raise
    if dates:
        run_dates.delay(dates)
    return dates


# Each move of a close (a date begun, a step begun, a step recorded, a date ended) is a task of
# its own, which the next one's sending ends: a task that lost the database runs again from
# its start, which a task that had recorded its move and then lost the database on the next
# could not (it would find the move done and start nothing: a re-verifier's, the cut between
# two steps failed the close eight times in eight).


@celery.task(name="close.run_dates", acks_late=True, bind=True)
def run_dates(self: Any, dates: list[str]) -> None:
    """Close these dates (already marked pending), oldest first."""
    try:
        attempt = runtime.run(close_service.begin_run(date.fromisoformat(dates[0])))
    except Exception as exc:
        _again_when_the_database_is_back(self, exc)
        raise
    if attempt is not None:
        start_step.delay(dates, 0, attempt)


@celery.task(name="close.start_step", acks_late=True, bind=True)
def start_step(self: Any, dates: list[str], index: int, attempt: int) -> None:
    """Begin the step: its chunks fan out as a chord whose callback records it."""
    _or_fail_the_run(self, dates[0], attempt, lambda: _start_step(dates, index, attempt))


@celery.task(name="close.chunk", acks_late=True, ignore_result=False, bind=True)
def run_chunk(
    self: Any, step: str, as_of: str, low: str | None, high: str | None, attempt: int
) -> dict[str, int]:
    day = date.fromisoformat(as_of)
    try:
        return runtime.run(close_service.run_chunk(step, day, low, high, attempt))
    except Exception as exc:
        _again_when_the_database_is_back(self, exc)
        raise  # to the chord's error callback, which records the failure


@celery.task(name="close.step_done", acks_late=True, bind=True)
def step_done(
    self: Any, results: list[dict[str, int]], dates: list[str], index: int, attempt: int
) -> None:
    """Record the step, then the next one, or the date's end."""
    as_of = date.fromisoformat(dates[0])
    recorded = _or_fail_the_run(self, dates[0], attempt, lambda: runtime.run(
        close_service.finish_step(as_of, STEP_NAMES[index], results, attempt)
    ))  # fmt: skip
    if not recorded:
        return
    if index + 1 < len(STEP_NAMES):
        start_step.delay(dates, index + 1, attempt)
    else:
        end_run.delay(dates, attempt)


@celery.task(name="close.end_run", acks_late=True, bind=True)
def end_run(self: Any, dates: list[str], attempt: int) -> None:
    """Record the date closed, then the next date of the catch-up."""
    as_of = date.fromisoformat(dates[0])
    ended = _or_fail_the_run(
        self, dates[0], attempt, lambda: runtime.run(close_service.finish_run(as_of, attempt))
    )
    if ended and len(dates) > 1:
        run_dates.delay(dates[1:])


@celery.task(name="close.failed")
def run_failed(
    request: object, exc: BaseException, traceback: object, as_of: str, attempt: int
) -> None:
    record_failure.delay(as_of, f"{type(exc).__name__}: {exc}", attempt)


@celery.task(name="close.record_failure", acks_late=True, bind=True)
def record_failure(self: Any, as_of: str, error: str, attempt: int) -> None:
    """Record the attempt failed (nothing if it is over), once the database can be written."""
    try:
        runtime.run(close_service.fail_run(date.fromisoformat(as_of), error, attempt))
    except Exception as exc:
        _again_when_the_database_is_back(self, exc)
        raise


def _start_step(dates: list[str], index: int, attempt: int) -> None:
    as_of, step = dates[0], STEP_NAMES[index]
    bounds = runtime.run(close_service.chunks(step))
    if not runtime.run(
        close_service.begin_step(date.fromisoformat(as_of), step, len(bounds), attempt)
    ):
        return
    header = [run_chunk.s(step, as_of, low, high, attempt) for low, high in bounds]
    chord(header)(step_done.s(dates, index, attempt).on_error(run_failed.s(as_of, attempt)))
