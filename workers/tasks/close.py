"""The nightly close on Celery: each step's chunks fan out as a chord over the workers; the
chord's callback records the step and starts the next one, then the next missed date.

Nothing here blocks a worker waiting for others, so N workers share one close. Every chunk is
idempotent, so a chunk redelivered after a worker died does no harm; and every task carries
its run's attempt number, so one the broker hands back after that attempt was replaced (a
rerun once the run went stale) does nothing (`close_service.begin_run`, `_current`).
"""

import logging
from datetime import date
from typing import Any

from celery import chord

from app.close import service as close_service
from app.close.errors import CloseInProgress
from app.config import get_settings
from workers import runtime
from workers.celery_app import celery

STEP_NAMES = list(close_service.STEPS)

log = logging.getLogger("loanwatch.close")


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
    if dates:
        _start_date(dates)
    return dates


@celery.task(name="close.run_dates", acks_late=True)
def run_dates(dates: list[str]) -> None:
    """Close these dates (already marked pending), oldest first."""
    _start_date(dates)


@celery.task(name="close.chunk", acks_late=True, ignore_result=False)
def run_chunk(
    step: str, as_of: str, low: str | None, high: str | None, attempt: int
) -> dict[str, int]:
    day = date.fromisoformat(as_of)
    return runtime.run(close_service.run_chunk(step, day, low, high, attempt))


@celery.task(name="close.step_done", acks_late=True)
def step_done(results: list[dict[str, int]], dates: list[str], index: int, attempt: int) -> None:
    as_of = date.fromisoformat(dates[0])
    if not runtime.run(close_service.finish_step(as_of, STEP_NAMES[index], results, attempt)):
        return
    if index + 1 < len(STEP_NAMES):
        _start_step(dates, index + 1, attempt)
        return
    if runtime.run(close_service.finish_run(as_of, attempt)) and len(dates) > 1:
        _start_date(dates[1:])


@celery.task(name="close.failed")
def run_failed(
    request: object, exc: BaseException, traceback: object, as_of: str, attempt: int
) -> None:
    error = f"{type(exc).__name__}: {exc}"
    runtime.run(close_service.fail_run(date.fromisoformat(as_of), error, attempt))


def _start_date(dates: list[str]) -> None:
    attempt = runtime.run(close_service.begin_run(date.fromisoformat(dates[0])))
    if attempt is not None:
        _start_step(dates, 0, attempt)


def _start_step(dates: list[str], index: int, attempt: int) -> None:
    as_of, step = dates[0], STEP_NAMES[index]
    bounds = runtime.run(close_service.chunks(step))
    if not runtime.run(
        close_service.begin_step(date.fromisoformat(as_of), step, len(bounds), attempt)
    ):
        return
    header = [run_chunk.s(step, as_of, low, high, attempt) for low, high in bounds]
    chord(header)(step_done.s(dates, index, attempt).on_error(run_failed.s(as_of, attempt)))
