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
