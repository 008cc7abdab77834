"""Rows written as one array per column (``insert_rows``, ``update_rows``) read back exactly
as written, JSON of every shape included, on PostgreSQL (the arrays) and on SQLite (an
executemany)."""

from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, select
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
