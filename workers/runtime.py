"""One event loop per worker process, and the database engine created on it after fork.

Celery's prefork pool forks worker processes from the parent; an engine or loop made before
the fork would be shared by children and break (the classic failure of async code under
Celery). Each process therefore makes its own loop lazily, and every task runs its coroutine
on that same loop, so pooled connections stay bound to the loop that opened them.
"""

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

from app.db import database

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None


def worker_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a task's coroutine on this process's loop."""
    return worker_loop().run_until_complete(coroutine)


def reset_after_fork() -> None:
    """Forget the parent's loop and engine in a freshly forked child."""
    global _loop
    _loop = None
    database.forget()
    settle_garbage_collector()


def settle_garbage_collector() -> None:
    """A close chunk makes hundreds of thousands of short-lived rows, dicts and tuples. With
    CPython's defaults (a collection every 700 of them) the collector kept walking the heap,
    every imported module included: a quarter of the risk step's CPU in this process on a
    first night (bench/risk_chunk_profile.py). What the process holds before its first task
    is frozen out of collection, and the youngest generation is collected less often."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
