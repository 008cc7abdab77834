"""Alembic environment: async engines for both PostgreSQL and SQLite (batch mode on SQLite)."""

import asyncio
import sqlite3
import time
from typing import Any

from alembic import context
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import get_settings
from app.models import Base

target_metadata = Base.metadata


def _url() -> str:
    return context.config.get_main_option("sqlalchemy.url") or get_settings().database_url


# Any number: the key of the lock every migration of a database takes.
_MIGRATION_LOCK = 7_264_845_301

# How long a migration of the embedded default's file waits for another one to finish.
_SQLITE_WAIT_MS = 600_000


def _one_sqlite_migration_at_a_time(engine: AsyncEngine) -> None:
    """The whole upgrade as one SQLite transaction that holds the file's write lock from its
    first statement: a second `migrate` (or a `serve` migrating at start) waits, then finds the
    schema at head. Two at once interleaved their DDL, one failing on a table the other had
    made and leaving batch mode's _alembic_tmp_ tables behind (a tester's)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _transactions_are_ours(dbapi_connection: Any, _record: Any) -> None:
        # The driver would begin its own transactions at the first write and commit before
        # DDL; the BEGIN below replaces them.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_WAIT_MS}")
        _write_ahead_log(cursor)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _write_lock_first(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _write_ahead_log(cursor: Any) -> None:
    """The file in WAL mode, as the service runs it, before any transaction of Loanwatch's:
    switching needs the file to itself, and SQLite refuses it at once, without waiting, while
    another connection writes. A file left in its first mode was switched by the first
    process to connect, which failed "database is locked" beside another one writing (a
    re-verifier's: `close`, `api-keys create` and `serve` started on a new folder). Tried
    again here for as long as a migration waits for another."""
    for _ in range(_SQLITE_WAIT_MS // 50):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA journal_mode=WAL")


def _record_applied(*, step: Any, **_: Any) -> None:
    """For ``loanwatch migrate`` to say what it did (app/migrate.py)."""
    context.config.attributes.setdefault("applied", []).append(step.up_revision_id)


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        on_version_apply=_record_applied,
        render_as_batch=sqlite,
        compare_type=True,
        # SQLite's DDL is transactional; Alembic assumes it is not and commits each revision.
        transactional_ddl=True if sqlite else None,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # One migration at a time (two API replicas starting at once, each migrating
            # first): the second waits, then finds the schema at head. Side by side, one
            # failed creating the version table the other was creating (a tester's).
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url())
    if engine.dialect.name == "sqlite":
        _one_sqlite_migration_at_a_time(engine)
    async with engine.connect() as connection:
        await connection.run_sync(_configure)
        await connection.commit()
    await engine.dispose()


# The lender's zone, for a backfill that derives a business date from an instant (0017's).
context.config.attributes.setdefault("timezone", get_settings().timezone)

if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
