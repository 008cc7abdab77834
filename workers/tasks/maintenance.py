"""Housekeeping tasks: thin wrappers over app services."""

import logging

from app.api import idempotency
from app.db import is_connection_lost, session_scope
from workers import runtime
from workers.celery_app import celery

log = logging.getLogger("loanwatch.maintenance")


async def _purge() -> int:
    async with session_scope() as session:
        return await idempotency.purge_expired(session)


@celery.task(name="maintenance.purge_idempotency_keys", acks_late=True)
def purge_idempotency_keys() -> int:
    """Hourly: a purge the database is away for waits for the next hour, told in a line (a
    traceback said no more, a re-verifier's)."""
    try:
        return runtime.run(_purge())
    except Exception as exc:
        if not is_connection_lost(exc):
            raise
        log.warning("idempotency keys not purged, the database is away: %s", exc)
        return 0
