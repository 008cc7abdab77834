"""Settings, read once from the environment (prefix ``LOANWATCH_``).

With nothing configured the service runs on the embedded default: a SQLite file in the working
folder and the scheduled work in-process. Nested groups use ``__``, e.g.
``LOANWATCH_CREDIT__INCOME_MULTIPLE=4``.
"""

from collections.abc import Mapping
from decimal import Decimal
from difflib import get_close_matches
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.connection import parse_url
from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from app.money import MINOR_DIGITS

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite",
}  # fmt: skip


def _postgres_url(url: URL) -> URL:
    if not url.database:
        # The driver took the user's name: the tables went into `postgres` (a tester's).
        raise ValueError("name the database: postgresql://user@host/database")
    if "sslmode" in url.query:
        # libpq's spelling, which hosted databases' URLs carry: asyncpg takes the same modes
        # as `ssl`, and refused `sslmode` with a traceback (a re-verifier's).
        mode = url.query["sslmode"]
        url = url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
    return url


def _check_sqlite_file(database: str | None) -> None:
    if not database or database == ":memory:":
        raise ValueError("SQLite in memory keeps nothing between processes: give a file")
    if database.endswith("/") or Path(database).is_dir():
        # SQLite dropped the slash and made the file, readable by every user; or its thread's
        # failure came with a traceback after the one line (a tester's each).
        raise ValueError(f"{database}: names a folder; give the SQLite file's name")
    folder = Path(database).parent
    if not folder.is_dir():
        # SQLite creates the file, not its folder: the driver's failure came with a traceback
        # from its thread now and then (a tester's).
        raise ValueError(f"{folder}: not a folder, so the SQLite file cannot be made in it")


# uvicorn's levels, which the API logs at.
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


# The largest amount a setting may give, in major units: a thousand billion, ten times of it (a
# payment's ceiling) in minor units of three decimals still a 64-bit integer.
LARGEST_SETTING = Decimal(10**12)


class CreditPolicy(BaseModel):
    """Initial credit limit: a multiple of declared monthly income, capped.

    See docs/credit-policy.md.
    """

    # Bounded so that a limit fits the database's 64-bit minor units in every currency (1e400
    # was taken, and every borrower's creation was a 500: a tester's).
    income_multiple: Decimal = Field(default=Decimal(3), ge=0, le=1000)
    limit_without_income: Decimal = Field(default=Decimal("3000.00"), ge=0, le=LARGEST_SETTING)
    max_limit: Decimal = Field(default=Decimal("50000.00"), ge=0, le=LARGEST_SETTING)


class CloseSettings(BaseModel):
    """The nightly close (docs/nightly-close.md)."""

    # Local time (in ``Settings.timezone``) at which the day that just ended is closed.
    time: str = Field(default="02:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    chunk_size: int = Field(default=20000, ge=1, le=1_000_000)
    # installment.due_soon goes out this many days before the due date.
    reminder_days: int = Field(default=3, ge=0, le=60)
    # An installment counts as missed only when more than this is unpaid (major units).
    arrears_tolerance: Decimal = Field(default=Decimal("1.00"), ge=0, le=LARGEST_SETTING)
    charge_off_after_days: int = Field(default=180, ge=91, le=3_660)
    # One request closes at most this many dates (a first close this far back, or a catch-up
    # after a long outage, goes in steps).
    max_dates_per_request: int = Field(default=400, ge=1, le=3_660)
    # A run still "running" without a heartbeat for this long is taken to have crashed. A live
    # close beats after every chunk, seconds apart at 1M loans (docs/nightly-close.md).
    stale_after_minutes: int = Field(default=10, ge=1, le=10_080)
    # The scheduled close meeting one already running (a manual close) tries again this often,
    # this many times (3 hours by default); after that the next night catches the date up.
    nightly_retry_seconds: float = Field(default=300, ge=0.1, le=86_400)
    nightly_retries: int = Field(default=36, ge=0, le=10_000)


class PortfolioSettings(BaseModel):
    """Portfolio views and segment alerts (docs/portfolio.md)."""

    # A segment alert: the metric above this multiple of its trailing mean...
    alert_multiple: Decimal = Field(default=Decimal("1.5"), gt=1, le=100)
    # ...over at least this many loans (the metric's denominator)...
    alert_min_loans: int = Field(default=50, ge=1, le=10_000_000)
    # ...the mean taken over this many months of earlier closes, and at least this many of
    # them (a new segment has no norm yet)...
    alert_trailing_months: int = Field(default=6, ge=1, le=24)
    alert_min_closes: int = Field(default=7, ge=1, le=1_000)
    # ...and at least this much above it (a single default against a zero norm is no jump)...
    alert_min_increase: Decimal = Field(default=Decimal("0.02"), ge=0, lt=1)
    # ...once in this many days per segment and metric: one alert per episode, not one a night
    # while the rate stays up.
    alert_quiet_days: int = Field(default=30, ge=1, le=366)
    # First-payment default is measured on loans whose first installment became observable
    # (due date + 10 or + 30 days) within this many days before the close.
    fpd_cohort_days: int = Field(default=30, ge=1, le=365)
    # Daily loan snapshots older than this are pruned; month-end snapshots are kept.
    snapshot_retention_days: int = Field(default=400, ge=35, le=36_600)


ENV_PREFIX = "LOANWATCH_"


class Settings(BaseSettings):
    # Every number has a ceiling: past one, a setting that started cleanly overflowed a date,
    # a timedelta or a database integer later, on every request that used it or in every close
    # (testers': a lock of 1e14 s made every POST with an Idempotency-Key a 500, a chunk of
    # 1e20 loans failed every close). Each ceiling is far beyond any use; the floors of the
    # loops' intervals keep a core from spinning (a sweep every 1e-300 s took one whole).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = "sqlite+aiosqlite:///./loanwatch.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Business dates ("today", the nightly close) are reckoned in this zone.
    timezone: str = "Asia/Shanghai"
    default_currency: str = Field(default="CNY", pattern=r"^[A-Z]{3}$")
    credit: CreditPolicy = Field(default_factory=CreditPolicy)
    close: CloseSettings = Field(default_factory=CloseSettings)
    portfolio: PortfolioSettings = Field(default_factory=PortfolioSettings)
    # Largest principal or payment the API accepts, in major units of any currency.
    max_amount: Decimal = Field(default=Decimal("100000000"), gt=0, le=LARGEST_SETTING)
    # A promise to pay falls due at most this many days after the business date it is made on.
    promise_max_days: int = Field(default=90, ge=1, le=366)
    # How far ahead a repayment plan's last installment may fall.
    repayment_plan_max_days: int = Field(default=366, ge=1, le=1830)
    # Largest request body the API reads: its largest, a repayment plan, is a few kilobytes.
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=104_857_600)
    # SPEC: keys are kept at least 24 hours.
    idempotency_ttl_hours: int = Field(default=48, ge=24, le=87_600)
    # An idempotency record still "in progress" after this long belongs to a crashed request.
    idempotency_lock_seconds: int = Field(default=60, ge=1, le=86_400)
    db_pool_size: int = Field(default=10, ge=1, le=1_000)
    # A new PostgreSQL connection not made by then fails (503 database_unavailable): a host
    # that does not answer held each request 60 s, asyncpg's default, then a 500 (a tester's).
    db_connect_timeout_seconds: float = Field(default=5, gt=0, le=300)
    # Webhooks: targets resolving to private, loopback or link-local addresses are refused
    # unless this is set (tests, on-premises receivers).
    webhook_allow_private_targets: bool = False
    # After a rotation the old secret still signs (an endpoint's) or verifies (a gateway's).
    webhook_secret_overlap_hours: float = Field(default=24, ge=0, le=8_760)
    webhook_disable_after_days: float = Field(default=5, gt=0, le=365)
    # An attempt starts only while its delivery's 60 s lease (app/webhooks/dispatcher.py) has
    # a timeout's worth left: a longer timeout would leave deliveries waiting out leases.
    webhook_timeout_seconds: float = Field(default=10, ge=0.1, le=30)
    webhook_batch_size: int = Field(default=500, ge=1, le=10_000)
    # Seconds between sweeps for due retries (and anything a lost wake-up missed).
    webhook_sweep_seconds: float = Field(default=2, ge=0.05, le=3_600)
    # Scheduled work (nightly close, webhook dispatch) runs in the API process instead of on
    # Celery. Unset: in-process on SQLite (the embedded default), Celery on PostgreSQL.
    in_process_scheduler: bool | None = None
    log_level: LogLevel = "info"

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """The URL with the driver the service runs on: ``postgresql://`` (and Heroku's
        ``postgres://``) means asyncpg, ``sqlite://`` aiosqlite. Another driver was a traceback
        of 160 lines about a module not installed (a re-verifier's). SQLite in memory is gone
        with its process, and the service's processes (the migration, the API, the CLI) each
        open it afresh: refused too, where it was a traceback from the engine's pool (a
        tester's)."""
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL") from None
        driver = _ASYNC_DRIVERS.get(url.drivername)
        if driver is None:
            raise ValueError(
                f"{url.drivername}: the service runs on PostgreSQL "
                "(postgresql+asyncpg://user@host/database) or SQLite (sqlite+aiosqlite:///file)"
            )
        url = _postgres_url(url) if driver == "postgresql+asyncpg" else url
        if url.port is not None and not 0 < url.port < 65536:
            # The driver's OverflowError came as a traceback of 500 lines (a tester's).
            raise ValueError(f"port {url.port} is no TCP port (1-65535)")
        if driver == "sqlite+aiosqlite":
            _check_sqlite_file(url.database)
        return url.set(drivername=driver).render_as_string(hide_password=False)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        """The broker: checked at start, as the database is. "notaurl" made /readyz, the close
        and risk runs 500s, and the worker a traceback about a module (a tester's)."""
        scheme, separator, _ = value.partition("://")
        # Both Celery's broker and redis-py read these two.
        if not separator or scheme not in ("redis", "rediss"):
            raise ValueError("not a Redis URL: redis://host:port/db (rediss:// for TLS)")
        # A port that is no port, or a database that is no number, passed too: /readyz and the
        # close answered 500, or /readyz ok while the queue refused every close (a tester's).
        try:
            port = parse_url(value).get("port")  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(f"not a Redis URL: {exc}") from None
        if port == 0:
            raise ValueError("port 0 is no TCP port (1-65535)")
        database = urlsplit(value).path.lstrip("/")
        if database and not (database.isascii() and database.isdigit()):
            raise ValueError(f"{database!r} is no Redis database number: redis://host:port/0")
        return value

    # Checked at start: an unknown zone or currency was a 500 on the first request that needed
    # it, and the in-process scheduler's loop died silently (a tester's).
    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as 'Asia/Shanghai')"
            ) from None
        return value

    @field_validator("default_currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in MINOR_DIGITS:
            raise ValueError(f"unsupported currency {value!r}: one of {', '.join(MINOR_DIGITS)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _limits_within_amounts(self) -> "Settings":
        # An initial limit above what an admin may set it to could not be set back (a tester's).
        if self.credit.max_limit > self.max_amount:
            raise ValueError(
                f"LOANWATCH_CREDIT__MAX_LIMIT ({self.credit.max_limit}) is above "
                f"LOANWATCH_MAX_AMOUNT ({self.max_amount}), the largest limit an admin may set"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uses_celery(self) -> bool:
        if self.in_process_scheduler is None:
            return not self.is_sqlite
        return not self.in_process_scheduler

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each ``LOANWATCH_`` variable that names no setting, with the setting it likely meant:
    pydantic-settings ignores them, and a misspelt one left its setting at its default without
    a word (a tester's: LOANWATCH_CLOSE__CHARGEOFF)."""
    known = _setting_names(Settings, "")
    unknown = []
    for name in sorted(environ):
        setting = name.upper().removeprefix(ENV_PREFIX)
        if name.upper().startswith(ENV_PREFIX) and setting not in known:
            meant = get_close_matches(setting, known, n=1)
            unknown.append((name, ENV_PREFIX + meant[0] if meant else None))
    return unknown


def _setting_names(model: type[BaseModel], prefix: str) -> set[str]:
    """The variables of a model's settings; a nested group is one too (its parts as JSON)."""
    names = set()
    for field, info in model.model_fields.items():
        name = prefix + field.upper()
        names.add(name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names |= _setting_names(info.annotation, name + "__")
    return names
