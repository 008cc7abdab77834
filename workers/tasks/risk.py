"""On-demand risk runs on Celery (the nightly close runs the risk step itself): the run's
chunks fan out as a chord over the workers, whose callback fans the grading of the same chunks
out as a second chord (a borrower's loans may lie in several chunks), whose callback records
the totals."""

from datetime import date

from celery import chord

from app.risk import runs
from workers import runtime
from workers.celery_app import celery


@celery.task(name="risk.run", acks_late=True)
def run(run_id: str) -> None:
    try:
        started = runtime.run(runs.begin(run_id))
    except Exception as exc:
        runtime.run(runs.fail(run_id, exc))
        raise
    if started is None:
        return
    as_of, bounds = started
    header = [run_chunk.s(as_of.isoformat(), low, high) for low, high in bounds]
    chord(header)(grade.s(run_id, as_of.isoformat(), bounds).on_error(run_failed.s(run_id)))


@celery.task(name="risk.chunk", acks_late=True, ignore_result=False)
def run_chunk(as_of: str, low: str | None, high: str | None) -> dict[str, int]:
    return runtime.run(runs.run_chunk(date.fromisoformat(as_of), low, high))


@celery.task(name="risk.grade", acks_late=True)
def grade(
    results: list[dict[str, int]], run_id: str, as_of: str, bounds: list[list[str | None]]
) -> None:
    header = [grade_chunk.s(as_of, low, high) for low, high in bounds]
    chord(header)(run_done.s(run_id, results).on_error(run_failed.s(run_id)))


@celery.task(name="risk.grade_chunk", acks_late=True, ignore_result=False)
def grade_chunk(as_of: str, low: str | None, high: str | None) -> dict[str, int]:
    return runtime.run(runs.grade_chunk(date.fromisoformat(as_of), low, high))


@celery.task(name="risk.run_done", acks_late=True)
def run_done(
    grade_results: list[dict[str, int]], run_id: str, risk_results: list[dict[str, int]]
) -> None:
    runtime.run(runs.finish(run_id, [*risk_results, *grade_results], chunks=len(risk_results)))


@celery.task(name="risk.run_failed")
def run_failed(request: object, exc: BaseException, traceback: object, run_id: str) -> None:
    runtime.run(runs.fail(run_id, exc))
