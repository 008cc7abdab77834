"""Webhook delivery on Celery: a wake-up after each commit that wrote deliveries, and a sweep
from beat for retries that fall due (their times live in PostgreSQL, never in the broker)."""

from app.webhooks import dispatcher, wakeup
from workers import runtime
from workers.celery_app import celery


@celery.task(name="webhooks.dispatch", acks_late=True, ignore_result=True)
def dispatch() -> int:
    """Deliver what is due, batch after batch, for up to ~20 s."""
    wakeup.dispatch_started()
    return runtime.run(dispatcher.drain())
