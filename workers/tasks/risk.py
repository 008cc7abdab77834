"""On-demand risk runs on Celery (the nightly close runs the risk step itself): the run's
chunks fan out as a chord over the workers, whose callback records the totals."""

from datetime import date

from celery import chord

from app.risk import runs
from workers import runtime
from workers.celery_app import celery


@celery.task(name="risk.run", acks_late=True)
def run(run_id: str) -> None:
    try:
        as_of, bounds = runtime.run(runs.begin(run_id))
    except Exception as exc:
        runtime.run(runs.fail(run_id, exc))
        raise
    header = [run_chunk.s(as_of.isoformat(), low, high) for low, high in bounds]
    chord(header)(run_done.s(run_id).on_error(run_failed.s(run_id)))


@celery.task(name="risk.chunk", acks_late=True, ignore_result=False)
def run_chunk(as_of: str, low: str | None, high: str | None) -> dict[str, int]:
    return runtime.run(runs.run_chunk(date.fromisoformat(as_of), low, high))


@celery.task(name="risk.run_done", acks_late=True)
def run_done(results: list[dict[str, int]], run_id: str) -> None:
    runtime.run(runs.finish(run_id, results))


@celery.task(name="risk.run_failed")
def run_failed(request: object, exc: BaseException, traceback: object, run_id: str) -> None:
    runtime.run(runs.fail(run_id, exc))
