"""The embedded default's in-process scheduler: the same service functions Celery beat would
trigger, run as asyncio tasks inside the API process (no Redis needed)."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_fixed,
)

from app.api import idempotency
from app.close import service as close_service
from app.close.errors import CloseInProgress
from app.config import get_settings
from app.db import is_connection_lost, session_scope
from app.webhooks import dispatcher
from app.webhooks.wakeup import wakeup

log = logging.getLogger("loanwatch.scheduler")


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[], Awaitable[object]]
    every_seconds: float | None = None
    # Local wall-clock time (Settings.timezone) for a daily job.
    daily_at: time | None = None
    # Asks a run in progress to end soon, its work recorded, when the process stops; a job
    # without one is cancelled where it stands.
    wind_down: Callable[[], None] | None = None
    # Whether a daily job should run as the process starts, before its time: work the last
    # stop cut short.
    due_at_start: Callable[[], Awaitable[bool]] | None = None

    def seconds_until_next(self, now: datetime) -> float:
        if self.daily_at is None:
            assert self.every_seconds is not None
            return self.every_seconds
        # On the zone's calendar, then told apart in UTC: datetimes of one zone subtract on the
        # wall clock, and on a day the clocks moved the close ran an hour early or late (a
        # tester's). A time the clocks skip runs at the offset before the change (fold 0), and
        # so does one they repeat: in the second pass of that hour it is past (compared on
        # the wall clock it was ahead, and the close ran again at once: a tester's).
        at = time(self.daily_at.hour, self.daily_at.minute)
        now_utc = now.astimezone(UTC)
        next_run = datetime.combine(now.date(), at, tzinfo=now.tzinfo).astimezone(UTC)
        if next_run <= now_utc:
            tomorrow = now.date() + timedelta(days=1)
            next_run = datetime.combine(tomorrow, at, tzinfo=now.tzinfo).astimezone(UTC)
        return (next_run - now_utc).total_seconds()


async def _purge_idempotency_keys() -> object:
    async with session_scope() as session:
        return await idempotency.purge_expired(session)


def _log_wait(state: RetryCallState) -> None:
    log.info("nightly close waits: %s", state.outcome and state.outcome.exception())


async def nightly_close() -> object:
    """Close the day that just ended; while a manual close runs, try again until it is done
    (as the Celery task does): tomorrow's close would catch the date up, a day late."""
    settings = get_settings().close
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(CloseInProgress),
        wait=wait_fixed(settings.nightly_retry_seconds),
        stop=stop_after_attempt(settings.nightly_retries + 1),
        before_sleep=_log_wait,
        reraise=True,
    ):
        with attempt:
            dates = await close_service.close_yesterday()
    await close_service.run_dates_in_process(dates)
    return dates


class WebhookDispatcher:
    """Sleeps until a commit wrote deliveries (or the sweep interval passes), then drains."""

    def __init__(self) -> None:
        self.signal = asyncio.Event()
        self.stopping = asyncio.Event()
        wakeup.attach(self.signal)

    async def run_once(self) -> object:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.signal.wait(), get_settings().webhook_sweep_seconds)
        self.signal.clear()
        return await dispatcher.drain(stop=self.stopping)

    def wind_down(self) -> None:
        """The drain starts no attempt more and ends once those in flight are recorded."""
        self.stopping.set()
        self.signal.set()


def default_jobs() -> tuple[Job, ...]:
    close_time = time.fromisoformat(get_settings().close.time)
    webhooks = WebhookDispatcher()
    return (
        Job("purge-idempotency-keys", _purge_idempotency_keys, every_seconds=3600),
        Job("nightly-close", nightly_close, daily_at=close_time,
            due_at_start=close_service.cut_short_by_a_stop),
        Job("webhook-dispatcher", webhooks.run_once, every_seconds=0,
            wind_down=webhooks.wind_down),
    )  # fmt: skip


class InProcessScheduler:
    def __init__(self, jobs: tuple[Job, ...] | None = None) -> None:
        self._jobs = jobs if jobs is not None else default_jobs()
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[str] = set()
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.create_task(self._loop(job), name=job.name) for job in self._jobs]

    async def stop(self) -> None:
        """Cancels the jobs, but lets a run that can wind down end first (within an attempt's
        timeout): cancelled mid-drain, the dispatcher left the attempts it had sent unrecorded,
        and a graceful restart sent them again once their lease ran out (a tester's)."""
        self._stopping = True
        winding = []
        for job, task in zip(self._jobs, self._tasks, strict=True):
            if job.wind_down is not None and job.name in self._running:
                job.wind_down()
                winding.append(task)
            else:
                task.cancel()
        if winding:
            await asyncio.wait(winding, timeout=get_settings().webhook_timeout_seconds + 1)
        for task in self._tasks:
            # Not once more: a job recording its cancellation (the close failing its run) was
            # cut short by a second one while the dispatcher wound down, and the run was left
            # running (a re-verifier's, 7 stops of 10 as the close resumed at start).
            if not task.cancelling():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        wakeup.detach()
        await dispatcher.clients.close()

    async def _loop(self, job: Job) -> None:
        zone = get_settings().zone
        if job.daily_at is not None and not await self._due_at_start(job):
            await asyncio.sleep(job.seconds_until_next(datetime.now(zone)))
        while not self._stopping:
            self._running.add(job.name)
            try:
                await job.run()
            except Exception as exc:
                # A failed run is retried at the next tick; the scheduler itself keeps going.
                if is_connection_lost(exc):  # a line each tick of an outage, not a traceback
                    log.warning("scheduled job %s: the database does not answer: %s: %s",
                                job.name, type(exc).__name__, exc)  # fmt: skip
                else:
                    log.exception("scheduled job %s failed", job.name)
            finally:
                self._running.discard(job.name)
            if not self._stopping:
                await asyncio.sleep(job.seconds_until_next(datetime.now(zone)))

    @staticmethod
    async def _due_at_start(job: Job) -> bool:
        if job.due_at_start is None:
            return False
        try:
            return await job.due_at_start()
        except Exception:  # the database not there yet: the job waits for its time
            log.exception("scheduled job %s: could not tell whether it is due", job.name)
            return False
