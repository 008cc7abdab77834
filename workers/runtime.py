"""One event loop per worker process, and the database engine created on it after fork.

Celery's prefork pool forks worker processes from the parent; an engine or loop made before
the fork would be shared by children and break (the classic failure of async code under
Celery). Each process therefore makes its own loop lazily, and every task runs its coroutine
on that same loop, so pooled connections stay bound to the loop that opened them.
"""

import asyncio
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
