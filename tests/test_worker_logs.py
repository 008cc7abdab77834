"""The worker's and beat's logs at INFO, as the compose file runs them: beat's webhook sweep
every 2 s wrote two lines each time in the worker's (received, succeeded), 938 in a quarter
of an hour, and one in beat's (testers')."""

import logging

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

# Celery beat's line for each job it sends (celery/beat.py, Scheduler.apply_entry).
SENDING = "Scheduler: Sending due task %s (%s)"


def logged(
    logger: str, level: int, message: str, task: str, caplog: pytest.LogCaptureFixture
) -> bool:
    caplog.clear()
    context = {"name": task, "id": "t1", "runtime": 0.01, "return_value": 0, "args": "",
               "kwargs": "", "eta": None}  # fmt: skip
    with caplog.at_level(logging.INFO):
        logging.getLogger(logger).log(level, message, context)
    return bool(caplog.records)


@pytest.mark.parametrize(("logger", "message"), [
    ("celery.worker.strategy", LOG_RECEIVED), ("celery.app.trace", LOG_SUCCESS),
])  # fmt: skip
def test_the_dispatch_is_not_logged_at_info_and_other_tasks_are(
    logger: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Imported once the suite has set the worker's settings (its Redis database): the app
    # takes its broker at import, and imported while the tests are collected it had the
    # default one, which the Celery tests then pinged in vain.
    import workers.celery_app  # noqa: F401 - installs the filter

    assert not logged(logger, logging.INFO, message, "webhooks.dispatch", caplog)
    assert logged(logger, logging.INFO, message, "close.chunk", caplog)
    # Whatever goes wrong with a dispatch is still told.
    assert logged(logger, logging.ERROR, message, "webhooks.dispatch", caplog)


def test_beat_does_not_log_each_sweep_at_info_and_logs_the_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Beat logged each webhook sweep it sent, every 2 s: 43,000 lines a day around the
    nightly close's one (a tester's)."""
    import workers.celery_app  # noqa: F401 - installs the filter

    def sent(entry: str, task: str) -> bool:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            logging.getLogger("celery.beat").info(SENDING, entry, task)
        return bool(caplog.records)

    assert not sent("webhook-sweep", "webhooks.dispatch")
    assert sent("nightly-close", "close.nightly")
