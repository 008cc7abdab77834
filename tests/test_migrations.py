"""The Alembic migrations build exactly the schema the models describe, on both engines."""

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from app import migrate
from app.models import Base


async def schema_differences(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


async def test_postgres_schema_matches_the_models(postgres_database: str) -> None:
    assert await schema_differences(postgres_database) == []


async def test_sqlite_migrations_run_and_match_the_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"
    await asyncio.to_thread(migrate.upgrade, url)  # Alembic's env runs its own event loop
    assert await schema_differences(url) == []


def test_downgrade_to_base_and_back(postgres_database: str, tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite+aiosqlite:///{tmp_path / 'roundtrip.db'}"
    config = migrate.alembic_config(url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    command.upgrade(config, "head")


@pytest.mark.parametrize("name", sorted(p.name for p in migrate.MIGRATIONS.glob("versions/*.py")))
def test_migrations_do_not_import_the_app(name: str) -> None:
    source = (migrate.MIGRATIONS / "versions" / name).read_text()
    assert "import app" not in source
    assert "from app" not in source


def test_the_closes_of_an_empty_book_are_dates_snapshotted(tmp_path: Path) -> None:
    """Migration 0035 keeps apart the dates the close snapshotted: from the snapshots, and from
    the closes that found no open loan and left none, but not from closes whose snapshot the
    retention pruned (older than 400 days, not their month's last)."""
    import sqlite3

    from alembic import command

    path = tmp_path / "upgraded.db"
    config = migrate.alembic_config(f"sqlite+aiosqlite:///{path}")
    command.upgrade(config, "0034")
    closed = {
        "2024-01-15": False,  # a month with no snapshot: its book was empty
        "2025-03-10": True,  # pruned, its month's last (Mar 31) kept
        "2025-03-31": True,
        "2026-07-31": False,  # within the retention: empty
        "2026-08-31": True,
        "2026-09-01": True,
    }
    with sqlite3.connect(path) as db:
        for day, snapshotted in closed.items():
            db.execute(
                "INSERT INTO close_run (as_of, status, attempts, counts, steps) "
                "VALUES (?, 'succeeded', 1, '{}', '{}')",
                (day,),
            )
            if snapshotted and day != "2025-03-10":
                db.execute(
                    "INSERT INTO loan_snapshot (as_of, loan_id, merchant_id, product_code, "
                    "currency, status, bucket, days_past_due, principal_minor) "
                    "VALUES (?, 'loan_1', 'mer_1', 'P', 'CNY', 'active', 'current', 0, 100)",
                    (day,),
                )
        db.execute(
            "INSERT INTO close_run (as_of, status, attempts, counts, steps) "
            "VALUES ('2026-09-02', 'failed', 1, '{}', '{}')"
        )
    command.upgrade(config, "head")
    with sqlite3.connect(path) as db:
        days = [d for (d,) in db.execute("SELECT as_of FROM loan_snapshot_day ORDER BY as_of")]
    assert days == ["2024-01-15", "2025-03-31", "2026-07-31", "2026-08-31", "2026-09-01"]


async def test_a_database_an_unlanded_0038_stamped_gets_the_column_it_missed(
    tmp_path: Path,
) -> None:
    """Three commits had a data-only revision 0038 that was withdrawn: a database they
    migrated is stamped 0038 without borrower.limit_overridden, and every borrower read
    failed after an upgrade (a tester's). Migration 0039 adds the column where it is missing."""
    from alembic import command

    url = f"sqlite+aiosqlite:///{tmp_path / 'unlanded.db'}"
    config = migrate.alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0037")
    await asyncio.to_thread(command.stamp, config, "0038")
    await asyncio.to_thread(migrate.upgrade, url)
    assert await schema_differences(url) == []


def test_migrations_started_together_on_postgresql_run_one_at_a_time(
    postgres_database: str,
) -> None:
    """Two API replicas starting at once each migrate first: on a fresh database one failed,
    creating the version table the other was creating (a tester's)."""

    from tests.conftest import as_admin

    fresh = f"{postgres_database.rsplit('_', 1)[0]}_fresh_{os.getpid()}"
    name = fresh.rsplit("/", 1)[1]
    as_admin(f'CREATE DATABASE "{name}"')
    try:
        _migrate_twice_at_once(fresh)
        assert asyncio.run(schema_differences(fresh)) == []
    finally:
        as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate_twice_at_once(url: str) -> None:
    """Two `loanwatch migrate` started together on the database at ``url``: both succeed."""
    import subprocess

    from tests.processes import LOANWATCH, clean_env

    env = {**clean_env(), "LOANWATCH_DATABASE_URL": url}
    both = [
        subprocess.Popen([LOANWATCH, "migrate"], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for process in both:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr


def test_migrations_started_together_on_sqlite_run_one_at_a_time(tmp_path: Path) -> None:
    """Two `loanwatch migrate` (or a `serve` migrating at start beside one) on the embedded
    default's file: their DDL interleaved, and one failed on a table the other had made,
    leaving batch mode's _alembic_tmp_ tables in the file (a tester's, upgrading from 0010)."""
    import sqlite3

    from alembic import command

    path = tmp_path / "embedded.db"
    url = f"sqlite+aiosqlite:///{path}"
    command.upgrade(migrate.alembic_config(url), "0010")
    _migrate_twice_at_once(url)
    with sqlite3.connect(path) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master")]
    assert not [name for name in tables if name.startswith("_alembic_tmp")]
    assert asyncio.run(schema_differences(url)) == []


# Recorded at 01:30 on Dec 6 in Los Angeles (09:30 UTC) and at 17:30 on Dec 6 (01:30 UTC on
# Dec 7): the second's UTC date is a day after the business date it was recorded on.
_REVERSED_AT = {"pay_morning": "2026-12-06 09:30:00", "pay_evening": "2026-12-07 01:30:00"}


async def _insert_reversed_payments(url: str) -> None:
    from sqlalchemy import text

    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Payments alone: their loans' foreign keys are not what is tested.
                await connection.execute(text("SET LOCAL session_replication_role = replica"))
            # Each engine's own text for an instant in UTC, as the models stored them.
            offset = "+00" if connection.dialect.name == "postgresql" else ""
            for payment_id, reversed_at in _REVERSED_AT.items():
                await connection.execute(
                    text(
                        "INSERT INTO payment (id, loan_id, amount_minor, received_on, channel, "
                        "status, reversal_reason, reversed_at, created_at) VALUES (:id, "
                        "'loan_1', 10000, '2026-12-01', 'pos', 'reversed', 'nsf', "
                        f"'{reversed_at}{offset}', '2026-12-01 02:00:00{offset}')"
                    ),
                    {"id": payment_id},
                )
    finally:
        await engine.dispose()


async def _reversed_on(url: str) -> dict[str, str]:
    from sqlalchemy import text

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, reversed_on FROM payment"))
            return {payment_id: str(day) for payment_id, day in rows}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_reversal_recorded_before_0017_counts_from_its_business_date(
    engine: str, postgres_database: str, tmp_path: Path
) -> None:
    """0017 dates each earlier reversal by its instant's date in the lender's zone, as the code
    dates a reversal since. It took the UTC date: a day late for one recorded in Los Angeles'
    evening (or Shanghai's morning), which then fell outside the payment_reversal window of
    the day it was recorded on (a tester's)."""
    from alembic import command

    from tests.conftest import as_admin

    if engine == "sqlite":
        url, fresh = f"sqlite+aiosqlite:///{tmp_path / 'reversals.db'}", None
    else:
        url = f"{postgres_database.rsplit('_', 1)[0]}_reversals_{os.getpid()}"
        fresh = url.rsplit("/", 1)[1]
        as_admin(f'CREATE DATABASE "{fresh}"')
    config = migrate.alembic_config(url)
    config.attributes["timezone"] = "America/Los_Angeles"
    try:
        command.upgrade(config, "0016")
        asyncio.run(_insert_reversed_payments(url))
        command.upgrade(config, "0017")
        reversed_on = asyncio.run(_reversed_on(url))
    finally:
        if fresh:
            as_admin(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
    assert reversed_on == {"pay_morning": "2026-12-06", "pay_evening": "2026-12-06"}
