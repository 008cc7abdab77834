"""The embedded default's in-process scheduler: the same service functions Celery beat would
trigger, run as asyncio tasks inside the API process (no Redis needed)."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.api import idempotency
from app.db import session_scope

log = logging.getLogger("loanwatch.scheduler")


@dataclass(frozen=True)
class Job:
    name: str
    every_seconds: float
    run: Callable[[], Awaitable[object]]


async def _purge_idempotency_keys() -> object:
    async with session_scope() as session:
        return await idempotency.purge_expired(session)


JOBS = (Job("purge-idempotency-keys", 3600, _purge_idempotency_keys),)


class InProcessScheduler:
    def __init__(self, jobs: tuple[Job, ...] = JOBS) -> None:
        self._jobs = jobs
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(job), name=job.name) for job in self._jobs]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _loop(self, job: Job) -> None:
        while True:
            try:
                await job.run()
            except Exception:
                # A failed run is retried at the next tick; the scheduler itself keeps going.
                log.exception("scheduled job %s failed", job.name)
            await asyncio.sleep(job.every_seconds)
