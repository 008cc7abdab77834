"""Test set-up: a fresh PostgreSQL database per test session, built by the Alembic migrations,
and a clean state (truncated tables) per test. The API is exercised over HTTP through httpx."""

import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from hypothesis import settings

from app.config import get_settings
from app.db import database
from app.models import Base

# Speed is measured by the benchmarks under bench/, never by the suite: Hypothesis's deadline
# (200 ms an example) only failed a schedule property on a busy machine.
settings.register_profile("loanwatch", deadline=None)
settings.load_profile("loanwatch")

ADMIN_DSN = os.environ.get(
    "LOANWATCH_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_DB = f"loanwatch_test_{os.getpid()}"
TEST_DSN = f"{ADMIN_DSN.rsplit('/', 1)[0]}/{TEST_DB}"
# Each pytest-xdist worker has a Redis database of its own (gw0 → 14, gw1 → 13, …).
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
REDIS_URL = os.environ.get("LOANWATCH_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{14 - _WORKER}")


def _database_url() -> str:
    host = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{host}/{TEST_DB}"


def as_admin(sql: str) -> None:
    """One statement on the server's maintenance database (creating and dropping databases)."""
    import asyncio

    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_DSN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="session", autouse=True)
def postgres_database() -> Iterator[str]:
    as_admin(f'DROP DATABASE IF EXISTS "{TEST_DB}"')
    as_admin(f'CREATE DATABASE "{TEST_DB}"')
    # Tests need no durability: not waiting for each commit's WAL flush saves minutes.
    as_admin(f'ALTER DATABASE "{TEST_DB}" SET synchronous_commit = off')
    url = _database_url()
    os.environ["LOANWATCH_DATABASE_URL"] = url
    # A Redis database of the tests' own (the Celery tests flush it).
    os.environ["LOANWATCH_REDIS_URL"] = REDIS_URL
    # Work runs inline (the in-process path); the Celery tests switch it per test.
    os.environ["LOANWATCH_IN_PROCESS_SCHEDULER"] = "true"
    get_settings.cache_clear()
    from app import migrate

    migrate.upgrade(url)
    yield url
    as_admin(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


# The sequences TRUNCATE ... RESTART IDENTITY would restart: those of the tables' columns.
_OWNED_SEQUENCES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(s.relname)
FROM pg_class s
JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE s.relkind = 'S'
"""


@pytest.fixture(scope="session")
def clean_state(postgres_database: str) -> str:
    """Empty every table, children first, and restart their identities: on tables of a few
    rows, DELETE takes a few milliseconds where TRUNCATE of 35 tables took about 70 (a
    minute of the suite)."""
    import asyncio

    async def owned_sequences() -> list[str]:
        connection = await asyncpg.connect(TEST_DSN)
        try:
            return [row[0] for row in await connection.fetch(_OWNED_SEQUENCES)]
        finally:
            await connection.close()

    deletes = [f'DELETE FROM "{t.name}"' for t in reversed(Base.metadata.sorted_tables)]
    restarts = [f"ALTER SEQUENCE {name} RESTART" for name in asyncio.run(owned_sequences())]
    return "; ".join([*deletes, *restarts])


@pytest.fixture(autouse=True)
async def clean_database(clean_state: str) -> AsyncIterator[None]:
    async with database.engine.connect() as connection:
        raw = await connection.get_raw_connection()
        await raw.driver_connection.execute(clean_state)  # several statements: no parameters
    return


@pytest.fixture(scope="session")
def app(postgres_database: str):  # type: ignore[no-untyped-def]
    from app.main import create_app

    return create_app()


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    """The app as `loanwatch serve` runs it, behind GET /v1/loans/{id}'s lane."""
    from app.main import as_served

    transport = httpx.ASGITransport(app=as_served(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://loanwatch.test") as c:
        yield c


@pytest.fixture
async def impatient_database() -> AsyncIterator[None]:
    """The app's new connections give up waiting for a lock after 300 ms (PostgreSQL's
    lock_timeout): a lost race in the database, on demand."""
    admin = await asyncpg.connect(TEST_DSN)
    try:
        await admin.execute(f"ALTER DATABASE \"{TEST_DB}\" SET lock_timeout = '300ms'")
        await database.dispose()
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{TEST_DB}" RESET lock_timeout')
        await admin.close()
        await database.dispose()
