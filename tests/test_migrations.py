"""The Alembic migrations build exactly the schema the models describe, on both engines."""

import asyncio
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


async def test_an_older_close_s_judgement_of_a_late_fee_stands_after_the_upgrade(
    client: Any, postgres_database: str
) -> None:
    """Until the twenty-seventh session a close counted the payments received by its own date:
    an installment settled after its grace but before that close owed no fee. Migration 0038
    keeps that judgement; the current close, judging by the grace, charged it at the first
    close after the upgrade (a tester's). An installment still unpaid is charged as before."""
    from datetime import UTC, datetime

    from alembic import command
    from sqlalchemy import insert

    from app.close.models import CloseRun
    from app.db import session_scope
    from tests.factories import world

    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await w.post("/v1/close-runs", {"as_of": "2026-01-10"}, headers=w.admin, expect=201)
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    paid = await w.pay(loan["id"], "412.00", received_on="2026-02-15")  # due Feb 10, grace Feb 13
    # An older release closed through Feb 20 and, counting that payment, charged nothing.
    now = datetime.now(UTC)
    async with session_scope() as session:
        await session.execute(insert(CloseRun).values(
            as_of=datetime(2026, 2, 20).date(), status="succeeded", started_at=now,
            finished_at=now, succeeded_at=now, attempts=1, counts={}, steps={},
        ))  # fmt: skip
    config = migrate.alembic_config(postgres_database)
    await asyncio.to_thread(command.downgrade, config, "0037")
    await asyncio.to_thread(command.upgrade, config, "head")

    run = await w.post("/v1/close-runs", {"as_of": "2026-02-21"}, headers=w.admin, expect=201)
    assert run.json()["counts"].get("late_fees_assessed", 0) == 0
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["balances"]["fees_outstanding"]) == (0, "0.00")
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    assert schedule["installments"][0]["status"] == "paid"

    # The payment bounces: the installment owes again, and is judged again by its grace.
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    run = await w.post("/v1/close-runs", {"as_of": "2026-02-22"}, headers=w.admin, expect=201)
    assert run.json()["counts"]["late_fees_assessed"] == 1
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    assert schedule["installments"][0]["fees"] == "20.00"

    run = await w.post("/v1/close-runs", {"as_of": "2026-03-13"}, headers=w.admin, expect=201)
    assert run.json()["counts"]["late_fees_assessed"] == 1  # March's, unpaid by its grace
