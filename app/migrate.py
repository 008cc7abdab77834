"""Running the Alembic migrations from code (CLI, server start, tests)."""

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import make_url

from app.config import get_settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade(database_url: str | None = None) -> list[str]:
    """Migrate to the latest schema: the revisions applied, oldest first (none when the
    database was at it already)."""
    _private_sqlite_file(database_url or get_settings().database_url)
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    return list(config.attributes.get("applied", []))


class SQLiteFileError(Exception):
    """The embedded default's file cannot be made where the URL puts it."""


def _private_sqlite_file(database_url: str) -> None:
    """The embedded default's file, made readable by its owner alone before SQLite creates it
    (its journal and shared-memory files take its permissions): it holds the webhook and
    gateway secrets as they must be to sign, and borrowers' phone numbers, and under the usual
    umask it was readable by every user of the machine (a tester's). A file that exists keeps
    the permissions its operator gave it."""
    if (path := _sqlite_file(database_url)) is None:
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        # Told before SQLite tries: this was a traceback, and SQLite's own failure was
        # followed by one from its driver's thread now and then (a tester's).
        raise SQLiteFileError(f"cannot make the file: {exc.strerror}") from None


def shared_sqlite_file(database_url: str) -> str | None:
    """The embedded default's file when users other than its owner may read or write it (mode
    like 0644): one an older release made under the usual umask keeps its mode, and it holds
    the signing secrets (a tester's). Said, not changed: the operator may mean it."""
    if (path := _sqlite_file(database_url)) is None:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return path if mode & 0o077 else None


def _sqlite_file(database_url: str) -> str | None:
    """The file of a SQLite database URL; None for another database or an in-memory one."""
    url = make_url(database_url)
    return url.database if url.drivername.startswith("sqlite") and url.database else None
