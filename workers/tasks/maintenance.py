"""Housekeeping tasks: thin wrappers over app services."""

from app.api import idempotency
from app.db import session_scope
from workers import runtime
from workers.celery_app import celery


async def _purge() -> int:
    async with session_scope() as session:
        return await idempotency.purge_expired(session)


@celery.task(name="maintenance.purge_idempotency_keys", acks_late=True)
def purge_idempotency_keys() -> int:
    return runtime.run(_purge())
