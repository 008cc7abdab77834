"""Handing work from a request to the Celery workers. A request finds the broker down at once,
before it stores anything, and is answered 503 rather than a 500 after kombu's reconnect
attempts (about 19 s) with a run left pending that nothing will ever pick up."""

import logging
from typing import Any, ClassVar

import redis.asyncio as redis

from app.config import get_settings
from app.errors import LoanwatchError

log = logging.getLogger("loanwatch.queueing")


class BrokerUnavailable(LoanwatchError):
    status = 503
    code = "service_busy"
    title = "Service busy"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "30"}


async def broker_failure() -> str | None:
    """Why the broker does not answer a ping within a second (the exception's name), or None."""
    client = redis.from_url(get_settings().redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # any failure to reach it: refused, connection, timeout, auth
        # The answer names the class alone (/readyz is open to anyone); the log, the reason.
        log.warning("the broker does not answer: %s: %s", type(exc).__name__, exc)
        return type(exc).__name__
    finally:
        await client.aclose()
    return None


async def require_broker() -> None:
    """Refuse the request while the broker is unreachable."""
    if (failure := await broker_failure()) is not None:
        raise BrokerUnavailable(
            f"the task queue is unreachable ({failure}); nothing was stored, "
            "retry the request when it is back"
        )


def send(task: str, args: list[Any]) -> None:
    """Queue ``task`` without waiting for a result (the caller polls the database), so the
    result store is not touched."""
    from workers.celery_app import celery

    celery.send_task(task, args=args, ignore_result=True)
