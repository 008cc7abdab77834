"""On-demand risk runs on Celery (the nightly close runs the risk step itself)."""

from app.risk import runs
from workers import runtime
from workers.celery_app import celery


@celery.task(name="risk.run", acks_late=True)
def run(run_id: str) -> None:
    runtime.run(runs.execute(run_id))
