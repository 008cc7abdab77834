"""Settings are checked at start, and the command tells a configuration or a database it
cannot use in a line, not a traceback (a tester's: an unknown time zone started the service,
then answered 500)."""

import sqlite3
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.processes import LOANWATCH, clean_env


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timezone", "Mars/Olympus"),
        ("default_currency", "XYZ"),
        ("db_pool_size", -3),
        ("idempotency_ttl_hours", 1),  # SPEC: kept at least 24 h
        ("idempotency_lock_seconds", 0),
        ("log_level", "loud"),
        # A limit beyond the database's 64-bit minor units made every borrower's creation a
        # 500 (a tester's).
        ("max_amount", "1e400"),
        ("credit", {"max_limit": "1e20"}),
        ("credit", {"income_multiple": "1e30"}),
        # Past a ceiling, a setting that started cleanly overflowed a date or a timedelta
        # later: every POST with an Idempotency-Key, every rotation, every close a 500 or a
        # failure (a tester's).
        ("idempotency_lock_seconds", 10**14),
        ("idempotency_ttl_hours", 30_000_000),
        ("webhook_secret_overlap_hours", "inf"),
        ("webhook_secret_overlap_hours", "nan"),
        ("webhook_disable_after_days", "1e12"),
        ("close", {"reminder_days": 3_000_000}),
        ("close", {"stale_after_minutes": 10**11}),
        ("portfolio", {"snapshot_retention_days": 10**11}),
        ("close", {"chunk_size": 10**20}),  # beyond a database integer
        ("close", {"charge_off_after_days": 10**20}),
        ("close", {"max_dates_per_request": 999_999_999}),  # the nightly close's date overflowed
        ("webhook_batch_size", 10**20),
        ("portfolio", {"alert_multiple": "1e999999999"}),
        # A sweep this often took a whole core doing nothing.
        ("webhook_sweep_seconds", "1e-300"),
        # Gone with its process, and each of the service's processes opens its own.
        ("database_url", "sqlite:///:memory:"),
        ("database_url", "sqlite://"),
        # SQLite makes the file, not its folder.
        ("database_url", "sqlite:////nonexistent/folder/loanwatch.db"),
        ("database_url", "sqlite:///./"),  # SQLite made "." less the slash, world-readable
        ("database_url", "sqlite:////tmp"),  # a folder: a traceback from the driver's thread
        ("redis_url", "notaurl"),
        ("redis_url", "http://127.0.0.1:6379/8"),
        # A port that is none, or a database that is no number: /readyz and the close were
        # 500s, or /readyz ok while the queue refused every close (a tester's).
        ("redis_url", "redis://127.0.0.1:abc/8"),
        ("redis_url", "redis://127.0.0.1:99999/8"),
        ("redis_url", "redis://127.0.0.1:6379/abc"),
        ("redis_url", "redis://127.0.0.1:0/8"),
        ("database_url", "postgresql://u@db:99999/book"),  # a traceback of 500 lines
        ("database_url", "postgresql://u@db:5432/"),  # into the database named as the user
    ],
)
def test_a_setting_out_of_bounds_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{field: value})
    assert [error["loc"][0] for error in refused.value.errors()] == [field]


def test_a_log_level_in_capitals_is_taken() -> None:
    assert Settings(log_level="WARNING").log_level == "warning"


def run(
    tmp_path: Path, command: tuple[str, ...] = ("migrate",), **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOANWATCH, *command], cwd=tmp_path, env={**clean_env(), **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# demo printed pydantic's whole report, naming the field rather than the variable (a tester's).
@pytest.mark.parametrize("command", [("migrate",), ("demo", "--loans", "1"), ("api-keys", "list")])
def test_the_command_names_the_setting_it_cannot_use(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    done = run(tmp_path, command, LOANWATCH_TIMEZONE="Mars/Olympus",
               LOANWATCH_CLOSE__CHUNK_SIZE="-5")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: LOANWATCH_TIMEZONE: unknown time zone 'Mars/Olympus' (an IANA name such as "
        "'Asia/Shanghai')",
        "error: LOANWATCH_CLOSE__CHUNK_SIZE: Input should be greater than or equal to 1",
    ]
    assert not (tmp_path / "loanwatch.db").exists()


def test_an_initial_limit_cap_an_admin_could_not_set_is_refused(tmp_path: Path) -> None:
    """A cap above the largest amount gave borrowers a limit that, once changed, could not be
    set back (a tester's)."""
    done = run(tmp_path, LOANWATCH_CREDIT__MAX_LIMIT="1000000000000")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: LOANWATCH_CREDIT__MAX_LIMIT (1000000000000) is above LOANWATCH_MAX_AMOUNT "
        "(100000000), the largest limit an admin may set"
    ]
    assert not (tmp_path / "loanwatch.db").exists()
    assert Settings(credit={"max_limit": "100000000"}).credit.max_limit == 100_000_000


def test_a_variable_that_names_no_setting_is_told(tmp_path: Path) -> None:
    """pydantic-settings ignores it: misspelt, its setting kept its default without a word
    (a tester's)."""
    done = run(tmp_path, ("api-keys", "list"), LOANWATCH_CLOSE__CHARGEOFF="1",
               LOANWATCH_BOGUS="1", LOANWATCH_TIMEZONE="UTC")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[:2] == [
        "warning: LOANWATCH_BOGUS is no setting and is ignored",
        "warning: LOANWATCH_CLOSE__CHARGEOFF is no setting and is ignored (did you mean "
        "LOANWATCH_CLOSE__CHARGE_OFF_AFTER_DAYS?)",
    ]


def test_the_command_names_the_database_it_cannot_use(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://postgres:secret@127.0.0.1:5432/loanwatch_no_such_database"
    done = run(tmp_path, LOANWATCH_DATABASE_URL=url)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: the database at postgresql+asyncpg://postgres:***@127.0.0.1:5432/"
        'loanwatch_no_such_database: database "loanwatch_no_such_database" does not exist'
    ]
    done = run(tmp_path, LOANWATCH_DATABASE_URL="not a url")
    assert (done.returncode, done.stderr.splitlines()) == (
        2, ["error: LOANWATCH_DATABASE_URL: not a database URL"],
    )  # fmt: skip
    # A file that cannot be made where its folder is (/proc takes none): a traceback of 33
    # lines from making it private (a tester's).
    done = run(tmp_path, LOANWATCH_DATABASE_URL="sqlite+aiosqlite:////proc/loanwatch.db")
    assert (done.returncode, done.stderr.splitlines()) == (
        1, ["error: the database at sqlite+aiosqlite:////proc/loanwatch.db: cannot make the "
            "file: No such file or directory"],
    )  # fmt: skip


def test_a_nested_setting_that_is_not_json_and_a_newer_database_are_one_line(
    tmp_path: Path,
) -> None:
    done = run(tmp_path, LOANWATCH_CREDIT="notjson")
    assert (done.returncode, len(done.stderr.splitlines())) == (2, 1), done.stderr
    assert done.stderr.splitlines() == [
        "error: LOANWATCH_CREDIT: not a JSON object; set its parts as LOANWATCH_CREDIT__PART "
        "instead"
    ]
    assert run(tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "loanwatch.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    done = run(tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: the database at sqlite+aiosqlite:///./loanwatch.db: Can't locate revision "
        "identified by '9999'; was it migrated by a newer Loanwatch?"
    ]


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        ("postgresql://u:pw@db:5432/book", "postgresql+asyncpg://u:pw@db:5432/book"),
        ("postgres://u@db/book", "postgresql+asyncpg://u@db/book"),
        ("sqlite:///./book.db", "sqlite+aiosqlite:///./book.db"),
        ("postgresql+asyncpg://u@db/book", "postgresql+asyncpg://u@db/book"),
        # libpq's spelling, which asyncpg refused with a traceback.
        ("postgres://u@db/book?sslmode=require", "postgresql+asyncpg://u@db/book?ssl=require"),
    ],
)
def test_a_database_url_gets_the_driver_the_service_runs_on(given: str, taken: str) -> None:
    """A URL without the async driver was a traceback about a module not installed."""
    assert Settings(database_url=given).database_url == taken


def test_a_database_the_service_does_not_run_on_is_refused() -> None:
    with pytest.raises(ValidationError, match="mysql: the service runs on PostgreSQL"):
        Settings(database_url="mysql://u@db/book")


def test_a_key_description_the_api_would_refuse_is_refused(tmp_path: Path) -> None:
    """SQLite stored 5,000 characters, and PostgreSQL's refusal was told as the database's
    failure (a tester's)."""
    done = subprocess.run(
        [LOANWATCH, "api-keys", "create", "--role", "admin", "--description", "x" * 201],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == ["error: --description is over 200 characters"]
