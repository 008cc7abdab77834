"""The engine's pool: connections the server closed are replaced, not handed to a request."""

import asyncio
import logging
import random
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from app.config import get_settings
from app.db import database, is_connection_lost, is_transient, make_engine, session_scope
from tests.conftest import ADMIN_DSN, TEST_DB, TEST_DSN


async def test_a_connection_the_server_closed_is_replaced_on_checkout() -> None:
    engine = make_engine(get_settings())
    try:
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            pooled = (await connection.get_raw_connection()).driver_connection
        # The connection is idle in the pool; the server ends it (a restart, an idle timeout).
        admin = await asyncpg.connect(f"{ADMIN_DSN.rsplit('/', 1)[0]}/{TEST_DB}")
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        for _ in range(200):  # until the event loop has read the server's goodbye
            if pooled.is_closed():
                break
            await asyncio.sleep(0.05)
        assert pooled.is_closed()
        async with engine.connect() as connection:
            again = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert again != pid
    finally:
        await engine.dispose()


def test_sqlite_held_by_another_process_is_a_transient_error(tmp_path: Path) -> None:
    """Two server processes on one embedded file: the second writer gives up after the busy
    timeout, and that is a lost race (503 service_busy), not a 500."""
    engine = create_engine(f"sqlite:///{tmp_path / 'shared.db'}", connect_args={"timeout": 0})
    try:
        with engine.connect() as holder, engine.connect() as writer:
            holder.exec_driver_sql("BEGIN IMMEDIATE")
            with pytest.raises(OperationalError) as lost:
                writer.exec_driver_sql("BEGIN IMMEDIATE")
            holder.exec_driver_sql("ROLLBACK")
        assert is_transient(lost.value)
        with engine.connect() as connection, pytest.raises(OperationalError) as broken:
            connection.exec_driver_sql("SELECT * FROM no_such_table")
        assert not is_transient(broken.value)
    finally:
        engine.dispose()


async def test_a_new_sqlite_file_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    """A file only migrations made was not yet in WAL mode; the first connection of a process
    switched it, which needs the file to itself, and SQLite refuses that at once while
    another process writes: "database is locked" (a re-verifier's: `close`, `api-keys
    create` and `serve` started together on a new folder). Migrations leave it in WAL mode."""
    import sqlite3
    import threading

    from app import migrate
    from app.config import Settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    with sqlite3.connect(tmp_path / "new.db") as made:
        assert made.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    holder = sqlite3.connect(tmp_path / "new.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    engine = make_engine(Settings(database_url=url))
    try:
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        release.join()
        holder.close()
        await engine.dispose()


async def test_a_session_the_server_ends_mid_statement_is_a_lost_connection() -> None:
    """What the driver raises when an operator or a failover ends the session, straight from
    asyncpg (as ``Database.read_rows`` reads) and through SQLAlchemy, is a lost connection (503
    database_unavailable), and a statement's own error is not."""
    engine = make_engine(get_settings())
    victim = await asyncpg.connect(TEST_DSN)
    admin = await asyncpg.connect(TEST_DSN)
    try:
        pid = await victim.fetchval("SELECT pg_backend_pid()")
        sleeping = asyncio.create_task(victim.fetchval("SELECT pg_sleep(5)"))
        await asyncio.sleep(0.2)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(asyncpg.PostgresError) as raw:
            await sleeping
        assert is_connection_lost(raw.value), repr(raw.value)
        async with engine.connect() as connection:
            own = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await admin.execute("SELECT pg_terminate_backend($1)", own)
            with pytest.raises(DBAPIError) as wrapped:
                await connection.execute(text("SELECT 1"))
        assert is_connection_lost(wrapped.value), repr(wrapped.value)
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as mistaken:
                await connection.execute(text("SELECT 1 / 0"))
        assert not is_connection_lost(mistaken.value)
    finally:
        await victim.close()
        await admin.close()
        await engine.dispose()
    assert is_connection_lost(ConnectionRefusedError())


async def test_a_database_that_refuses_new_connections_is_unavailable() -> None:
    """Dropped, or closed to connections (ALTER DATABASE ... ALLOW_CONNECTIONS false): a 503
    database_unavailable, as a lost connection is; a re-verifier's GET was answered 500."""
    base = ADMIN_DSN.rsplit("/", 1)[0]
    closed = f"{TEST_DB}_closed"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{closed}"')
        await admin.execute(f'CREATE DATABASE "{closed}" ALLOW_CONNECTIONS false')
        for name in (closed, f"{TEST_DB}_never_created"):
            settings = get_settings().model_copy(
                update={"database_url": f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"}
            )
            engine = make_engine(settings)
            try:
                with pytest.raises(DBAPIError) as refused:
                    async with engine.connect():
                        pass
            finally:
                await engine.dispose()
            assert is_connection_lost(refused.value), repr(refused.value)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{closed}"')
        await admin.close()


async def test_a_transaction_cancelled_as_it_commits_logs_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancellation (a stopping server's, of a close or a request) that came as a
    transaction committed cut the connection's reset short as it went back to the pool, which
    logged an error with a traceback: the SIGTERM test failed on it in CI now and then. By
    hand, 44 of 300 cancellations of a loop of commits on SQLite; the commit is now seen
    through, and the cancellation goes on after it."""
    monkeypatch.setattr(get_settings(), "database_url", f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await database.dispose()
    try:
        async with session_scope() as session:
            await session.execute(text("CREATE TABLE t (a INTEGER)"))

        async def commit_for_ever() -> None:
            while True:
                async with session_scope() as session:
                    await session.execute(text("INSERT INTO t VALUES (1)"))

        rng = random.Random(20261207)
        with caplog.at_level(logging.ERROR, logger="sqlalchemy.pool"):
            for _ in range(300):
                committing = asyncio.create_task(commit_for_ever())
                await asyncio.sleep(rng.random() * 0.01)
                committing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await committing
        assert "Exception during reset" not in caplog.text
    finally:
        monkeypatch.undo()
        await database.dispose()
