"""The nightly close on Celery: each step's chunks fan out as a chord over the workers; the
chord's callback records the step and starts the next one, then the next missed date.

Nothing here blocks a worker waiting for others, so N workers share one close. Every chunk is
idempotent, so a chunk redelivered after a worker died does no harm.
"""

from datetime import date

from celery import chord

from app.close import service as close_service
from workers import runtime
from workers.celery_app import celery

STEP_NAMES = list(close_service.STEPS)


@celery.task(name="close.nightly", acks_late=True)
def nightly() -> list[str]:
    """Close the day that just ended (beat, at the configured local time)."""
    dates = [d.isoformat() for d in runtime.run(close_service.close_yesterday())]
    if dates:
        _start_date(dates)
    return dates


@celery.task(name="close.run_dates", acks_late=True)
def run_dates(dates: list[str]) -> None:
    """Close these dates (already marked pending), oldest first."""
    _start_date(dates)


@celery.task(name="close.chunk", acks_late=True, ignore_result=False)
def run_chunk(step: str, as_of: str, low: str | None, high: str | None) -> dict[str, int]:
    return runtime.run(close_service.run_chunk(step, date.fromisoformat(as_of), low, high))


@celery.task(name="close.step_done", acks_late=True)
def step_done(results: list[dict[str, int]], dates: list[str], index: int) -> None:
    as_of = date.fromisoformat(dates[0])
    runtime.run(close_service.finish_step(as_of, STEP_NAMES[index], results))
    if index + 1 < len(STEP_NAMES):
        _start_step(dates, index + 1)
        return
    runtime.run(close_service.finish_run(as_of))
    if len(dates) > 1:
        _start_date(dates[1:])


@celery.task(name="close.failed")
def run_failed(request: object, exc: BaseException, traceback: object, as_of: str) -> None:
    runtime.run(close_service.fail_run(date.fromisoformat(as_of), f"{type(exc).__name__}: {exc}"))


def _start_date(dates: list[str]) -> None:
    runtime.run(close_service.begin_run(date.fromisoformat(dates[0])))
    _start_step(dates, 0)


def _start_step(dates: list[str], index: int) -> None:
    as_of, step = dates[0], STEP_NAMES[index]
    bounds = runtime.run(close_service.chunks(step))
    runtime.run(close_service.begin_step(date.fromisoformat(as_of), step, len(bounds)))
    header = [run_chunk.s(step, as_of, low, high) for low, high in bounds]
    chord(header)(step_done.s(dates, index).on_error(run_failed.s(as_of)))
