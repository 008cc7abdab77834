"""The Celery application: Redis broker, settings from app/config.py, the beat schedule."""

import logging
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.signals import worker_process_init
from kombu.entity import Queue

import app.models  # noqa: F401 - every table mapped, as in the API process
from app.config import get_settings
from app.ops import metrics
from app.portfolio import positions  # noqa: F401 - before-flush listener keeping the counts
from app.webhooks import wakeup  # noqa: F401 - wakes the dispatcher after commits with events
from workers import runtime

settings = get_settings()
if settings.is_sqlite:
    # A worker started without the API's LOANWATCH_DATABASE_URL closes a file of its own while
    # the API's close waits, running, for ever (a tester's, following the README).
    logging.getLogger(__name__).warning(
        "this worker uses the SQLite database %s (LOANWATCH_DATABASE_URL): an API on another "
        "database never sees its work",
        settings.database_url,
    )

celery = Celery(
    "loanwatch",
    broker=settings.redis_url,
    # Chords (the close's fan-out) count finished chunks in the result backend.
    backend=settings.redis_url,
    include=[
        "workers.tasks.maintenance",
        "workers.tasks.close",
        "workers.tasks.webhooks",
        "workers.tasks.risk",
    ],
)
close_hour, close_minute = (int(part) for part in settings.close.time.split(":"))
celery.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    # A task is acknowledged only when done, so a killed worker's task runs again.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    timezone=settings.timezone,
    broker_connection_retry_on_startup=True,
    result_expires=86400,
    # Webhook delivery has a queue of its own: a worker started with -Q celery serves the
    # close and housekeeping and never makes a close's task wait behind a drain of up to
    # 20 s; one with -Q webhooks delivers. A worker started without -Q serves both.
    task_queues=(Queue("celery"), Queue("webhooks")),
    task_default_queue="celery",
    task_routes={"webhooks.dispatch": {"queue": "webhooks"}},
    beat_schedule={
        "nightly-close": {
            "task": "close.nightly",
            "schedule": crontab(hour=close_hour, minute=close_minute),
        },
        "webhook-sweep": {
            "task": "webhooks.dispatch",
            "schedule": settings.webhook_sweep_seconds,
            # A sweep still queued when the next is due is redundant.
            "options": {"expires": settings.webhook_sweep_seconds},
        },
        "purge-idempotency-keys": {
            "task": "maintenance.purge_idempotency_keys",
            "schedule": crontab(minute="17"),
        },
    },
)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    runtime.reset_after_fork()
    metrics.webhook_attempts_from_zero()


class _QuietDispatch(logging.Filter):
    """Drops the INFO lines on ``webhooks.dispatch``: the worker's (received, succeeded) and
    beat's (sending due task). Beat sweeps every ``webhook_sweep_seconds`` (2), and at the
    compose file's log level the worker's were two every 2 s, 938 in a quarter of an hour,
    beat's 43,000 a day around the nightly close's one (testers'). A dispatch that fails
    still logs its error; the dispatcher's metrics count what it delivered."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = None
        if isinstance(record.args, dict):
            task = record.args.get("name")
        elif isinstance(record.args, tuple) and record.args:
            task = record.args[-1]  # beat's "Sending due task %s (%s)": the entry, its task
        return task != "webhooks.dispatch" or record.levelno > logging.INFO


for _logger in ("celery.worker.strategy", "celery.app.trace", "celery.beat"):
    logging.getLogger(_logger).addFilter(_QuietDispatch())
