"""Wake the dispatcher when a transaction that wrote deliveries commits, so a healthy receiver
gets the event within about a second; the periodic sweep catches any wake-up that is lost
(Redis down, process killed) — the deliveries themselves are already safe in the database."""

import asyncio
import logging
from concurrent.futures import Future
from functools import lru_cache

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.config import get_settings

log = logging.getLogger("loanwatch.webhooks")

# Bursts of commits (a close chunk, a busy POS) coalesce into one wake-up per window.
COALESCE_SECONDS = 0.05
# Across processes, one wake-up waits in the queue at a time: the drain it starts sends what
# every commit before it wrote. Without this, busy API processes queued hundreds of wake-ups,
# each a drain of up to a minute, and the close's tasks waited behind them. Held at most this
# long, so a wake-up the broker lost stops holding the others back (the sweep delivers meanwhile).
QUEUED_KEY = "loanwatch:webhooks:wakeup-queued"
QUEUED_SECONDS = 30


class Wakeup:
    def __init__(self) -> None:
        self._in_process: asyncio.Event | None = None
        self._scheduled = False

    def attach(self, signal: asyncio.Event) -> None:
        """The in-process dispatcher of this process waits on ``signal``."""
        self._in_process = signal

    def detach(self) -> None:
        self._in_process = None

    def notify(self) -> None:
        if self._in_process is not None:
            self._in_process.set()
            return
        if not get_settings().uses_celery or self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._scheduled = True
        loop.call_later(COALESCE_SECONDS, self._send, loop)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        future = loop.run_in_executor(None, _send_dispatch_task)
        future.add_done_callback(self._sent)

    def _sent(self, _: "Future[None] | asyncio.Future[None]") -> None:
        self._scheduled = False


def _broker() -> redis.Redis:
    return _client(get_settings().redis_url)


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def _send_dispatch_task() -> None:
    from workers.celery_app import celery

    try:
        if not _broker().set(QUEUED_KEY, 1, nx=True, ex=QUEUED_SECONDS):
            return  # a wake-up is queued already: its drain sends these deliveries too
        try:
            celery.send_task("webhooks.dispatch", retry=False)
        except Exception:
            _broker().delete(QUEUED_KEY)
            raise
    except Exception as exc:  # the broker is down: the sweep will deliver
        log.warning("could not wake the webhook dispatcher: %s", exc)


def dispatch_started() -> None:
    """A drain is starting: a commit from now on queues the next wake-up."""
    try:
        _broker().delete(QUEUED_KEY)
    except Exception as exc:  # the key expires by itself
        log.warning("could not clear the webhook wake-up flag: %s", exc)


wakeup = Wakeup()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop("outbox_written", False):
        wakeup.notify()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("outbox_written", None)
