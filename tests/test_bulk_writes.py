"""Rows written as one array per column (``insert_rows``, ``update_rows``) read back exactly
as written, JSON of every shape included, on PostgreSQL (the arrays) and on SQLite (an
executemany)."""

from datetime import date
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, Date, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.db import insert_rows, session_scope, update_rows, utc_now
from app.events.models import Event
from app.models import Base

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
events = cast(Table, Event.__table__)


def rows_of(data: list[Any]) -> list[dict[str, Any]]:
    return [
        {"id": f"evt_{n}", "loan_id": None if n % 2 else f"loan_{n}", "data": value}
        for n, value in enumerate(data)
    ]  # fmt: skip


async def written_and_read(session: AsyncSession, data: list[Any], changed: list[Any]) -> None:
    rows = rows_of(data)
    # What every row shares is bound once: each row reads it back all the same.
    now = utc_now()
    shared = {"type": "test", "created_at": now}
    positions = await insert_rows(session, events, rows, same=shared, returning="position")
    assert len(positions) == len(rows)
    got = (
        await session.execute(
            select(events.c.id, events.c.loan_id, events.c.data, events.c.type,
                   events.c.created_at)
        )
    ).all()  # fmt: skip
    assert sorted(got) == sorted((r["id"], r["loan_id"], r["data"], "test", now) for r in rows)
    await update_rows(session, events, "id", [
        {"id": row["id"], "data": value} for row, value in zip(rows, changed, strict=True)
    ])  # fmt: skip
    got = dict((await session.execute(select(events.c.id, events.c.data))).all())
    assert got == {row["id"]: value for row, value in zip(rows, changed, strict=True)}


@settings(max_examples=30, deadline=None)
@given(data=st.lists(json_value, min_size=1, max_size=5), seed=st.randoms())
async def test_postgresql_arrays_keep_every_row_and_json_shape(data: list[Any], seed: Any) -> None:
    changed = [seed.choice([[1, [2]], {"a": [None]}, "x", None]) for _ in data]
    async with session_scope() as session:
        await written_and_read(session, data, changed)
        await session.rollback()


async def test_sqlite_executemany_keeps_every_row(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'bulk.db'}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        async with async_sessionmaker(engine)() as session:
            await written_and_read(session, [[1, 2], {"a": [3]}, None], [None, ["x"], {"b": 1}])
    finally:
        await engine.dispose()


pairs = Table(
    "bulk_write_pairs", MetaData(),
    Column("loan_id", String(30), primary_key=True), Column("seq", Integer, primary_key=True),
    Column("amount_minor", BigInteger), Column("paid_on", Date),
)  # fmt: skip


async def updated_by_both_keys(session: AsyncSession) -> None:
    """A row is updated where every key column matches: the same loan's other rows, and the
    same seq of another loan, stay as they were."""
    await session.run_sync(lambda sync: pairs.create(sync.connection()))
    await insert_rows(session, pairs, [
        {"loan_id": loan_id, "seq": seq, "amount_minor": 100, "paid_on": None}
        for loan_id in ("loan_a", "loan_b") for seq in (1, 2, 3)
    ])  # fmt: skip
    await update_rows(session, pairs, ("loan_id", "seq"), [
        {"loan_id": "loan_a", "seq": 2, "amount_minor": 7, "paid_on": date(2026, 3, 1)},
        {"loan_id": "loan_b", "seq": 3, "amount_minor": 9, "paid_on": None},
    ])  # fmt: skip
    got = (await session.execute(select(pairs).order_by(pairs.c.loan_id, pairs.c.seq))).all()
    assert [tuple(row) for row in got] == [
        ("loan_a", 1, 100, None), ("loan_a", 2, 7, date(2026, 3, 1)), ("loan_a", 3, 100, None),
        ("loan_b", 1, 100, None), ("loan_b", 2, 100, None), ("loan_b", 3, 9, None),
    ]  # fmt: skip


async def test_postgresql_updates_by_a_key_of_two_columns() -> None:
    async with session_scope() as session:
        await updated_by_both_keys(session)
        await session.rollback()


async def test_sqlite_updates_by_a_key_of_two_columns(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'pairs.db'}")
    try:
        async with async_sessionmaker(engine)() as session:
            await updated_by_both_keys(session)
    finally:
        await engine.dispose()
