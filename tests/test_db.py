"""The engine's pool: connections the server closed are replaced, not handed to a request."""

import asyncio
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from app.config import get_settings
from app.db import is_transient, make_engine
from tests.conftest import ADMIN_DSN, TEST_DB


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
