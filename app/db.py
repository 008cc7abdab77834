"""Engine, sessions, the declarative Base and the few places where PostgreSQL and SQLite differ."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    CursorResult,
    DateTime,
    Dialect,
    Executable,
    MetaData,
    Select,
    Table,
    Text,
    bindparam,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Date, Integer, String, TypeDecorator
from sqlalchemy.util import await_only, greenlet_spawn

from app.config import Settings, get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware instants on both engines (SQLite stores naive text otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Rate(TypeDecorator[Decimal]):
    """A rate such as 0.1299 kept exactly as parts per million in a BIGINT (SQLite has no
    exact NUMERIC)."""

    impl = BigInteger
    cache_ok = True
    SCALE = 1_000_000

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        return None if value is None else int(value * self.SCALE)

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value) / self.SCALE


class days_between(FunctionElement[int]):
    """Whole days from ``earlier`` to ``later`` (DATE - DATE on PostgreSQL, julianday on
    SQLite)."""

    type = Integer()
    inherit_cache = True


@compiles(days_between, "postgresql")
def _days_between_pg(element: days_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = list(element.clauses)
    return f"(CAST({compiler.process(later, **kw)} AS DATE) - {compiler.process(earlier, **kw)})"


@compiles(days_between, "sqlite")
def _days_between_sqlite(element: days_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = list(element.clauses)
    return (
        f"CAST(julianday({compiler.process(later, **kw)}) - "
        f"julianday({compiler.process(earlier, **kw)}) AS INTEGER)"
    )


class add_days(FunctionElement[date]):
    """``day`` plus ``days`` whole days (DATE + INTEGER on PostgreSQL, date() on SQLite)."""

    type = Date()
    inherit_cache = True


@compiles(add_days, "postgresql")
def _add_days_pg(element: add_days, compiler: SQLCompiler, **kw: Any) -> str:
    day, days = list(element.clauses)
    return f"(CAST({compiler.process(day, **kw)} AS DATE) + {compiler.process(days, **kw)})"


@compiles(add_days, "sqlite")
def _add_days_sqlite(element: add_days, compiler: SQLCompiler, **kw: Any) -> str:
    day, days = list(element.clauses)
    return (
        f"date({compiler.process(day, **kw)}, printf('%+d days', {compiler.process(days, **kw)}))"
    )


class least(FunctionElement[int]):
    """The smaller of two whole numbers (LEAST on PostgreSQL, the two-argument min() on SQLite),
    each evaluated once, where a CASE comparing them repeats the larger's subquery."""

    type = BigInteger()
    inherit_cache = True


@compiles(least, "postgresql")
def _least_pg(element: least, compiler: SQLCompiler, **kw: Any) -> str:
    return f"LEAST({compiler.process(element.clauses, **kw)})"


@compiles(least, "sqlite")
def _least_sqlite(element: least, compiler: SQLCompiler, **kw: Any) -> str:
    return f"min({compiler.process(element.clauses, **kw)})"


class month_of(FunctionElement[str]):
    """A date's month as ``YYYY-MM``."""

    type = String()
    inherit_cache = True


@compiles(month_of, "postgresql")
def _month_of_pg(element: month_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY-MM')"


@compiles(month_of, "sqlite")
def _month_of_sqlite(element: month_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


class months_between(FunctionElement[int]):
    """Whole months from ``earlier`` to ``later`` as PostgreSQL's age() counts them: a month
    is complete when the day of the month comes round again (Jan 31 to Feb 28 is not one)."""

    type = Integer()
    inherit_cache = True


@compiles(months_between, "postgresql")
def _months_between_pg(element: months_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    age = f"age(CAST({later} AS DATE), CAST({earlier} AS DATE))"
    return f"CAST(EXTRACT(YEAR FROM {age}) * 12 + EXTRACT(MONTH FROM {age}) AS INTEGER)"


@compiles(months_between, "sqlite")
def _months_between_sqlite(element: months_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)

    def part(fmt: str, day: str) -> str:
        return f"CAST(strftime('{fmt}', {day}) AS INTEGER)"

    return (
        f"(({part('%Y', later)} - {part('%Y', earlier)}) * 12 + {part('%m', later)} "
        f"- {part('%m', earlier)} "
        f"- (CASE WHEN {part('%d', later)} < {part('%d', earlier)} THEN 1 ELSE 0 END))"
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_text(moment: datetime) -> str:
    """A UTC instant as the API writes one: RFC 3339 with ``Z``."""
    return moment.isoformat().replace("+00:00", "Z")


# PostgreSQL's deadlock_detected, serialization_failure and lock_not_available: the
# transaction lost a race to another one, and was rolled back.
_LOST_RACE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})


# The server ended the session (terminated, shutting down) or the connection failed; or it
# refused a new one: the database gone (3D000), not accepting connections (55000, ALTER
# DATABASE ... ALLOW_CONNECTIONS false), the role's login refused (28000, 28P01). Until the
# thirty-first session those three were a 500 (a re-verifier's).
_CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08001", "08003",
                                   "08004", "08006", "3D000", "55000", "28000",
                                   "28P01"})  # fmt: skip
# A refused or broken socket; asyncpg's own words for a connection that went away (its
# protocol left in a state it cannot continue from: "cannot switch to state"); a connection
# not made within db_connect_timeout_seconds (asyncpg raises the builtin TimeoutError, which
# SQLAlchemy passes on as it is: a 500 until the forty-fifth session). Nothing else a request
# runs lets a TimeoutError out (the webhook sends catch theirs).
_LOST_CONNECTION_ERRORS = (
    ConnectionError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InternalClientError,
)
# The driver's errors that may say so, by class (the session ended by the server, 57P01..).
DRIVER_CONNECTION_ERRORS = (*_LOST_CONNECTION_ERRORS, asyncpg.exceptions.OperatorInterventionError)


def is_connection_lost(exc: BaseException) -> bool:
    """The database went away under the request, or could not be reached: whether a
    transaction committed is not known if it went away at the commit. Through SQLAlchemy
    (which marks a disconnect) or straight from the driver (``Database.read_rows``, a refused
    connection)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    cause = exc.__cause__
    return (
        isinstance(exc, _LOST_CONNECTION_ERRORS)
        or isinstance(cause, _LOST_CONNECTION_ERRORS)
        or getattr(exc, "sqlstate", None) in _CONNECTION_SQLSTATES
        or getattr(cause, "sqlstate", None) in _CONNECTION_SQLSTATES
    )


def is_transient(exc: BaseException) -> bool:
    """A database error that running the whole transaction again can resolve: it lost a race
    for rows or, on SQLite, another process held the file past the busy timeout."""
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) in _LOST_RACE_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def make_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        # One connection serialises the embedded default's writers: SQLite allows one writer
        # anyway, and a single connection never meets "database is locked".
        engine = create_async_engine(settings.database_url, pool_size=1, max_overflow=0)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transactions begin at the first write, so what a transaction
            # read before it (a loan's payments, a borrower's exposure) another process could
            # change meanwhile: a second `serve`, or `loanwatch close`, on the same file lost
            # payments. Transactions are begun by _begin_immediate instead.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            # The wait first: switching a new file to WAL needs it to itself, and another
            # process writing failed it at once (a re-verifier's, three commands on a new file).
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            # Takes the file's write lock at once, as row locks would on PostgreSQL: processes
            # sharing the file run their transactions one after another, from their first read.
            # Reads on read_rows() (AUTOCOMMIT) take no lock and begin nothing.
            if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_async_engine(
        settings.database_url,
        # Up to twice db_pool_size connections, as before (pool_size + as many overflow), but
        # all kept once opened: overflow connections were closed on return and reopened within
        # moments under load, about one new connection (TCP, TLS attempt, a forked backend) per
        # 16 requests at 32 concurrent clients (bench/http_load.py).
        pool_size=2 * settings.db_pool_size,
        max_overflow=0,
        # No JIT: it compiled each close chunk's statements afresh (about 0.4 s per risk
        # chunk, bench/close_bench.py --explain) and never pays back on queries this size.
        connect_args={
            "server_settings": {"jit": "off"},
            "timeout": settings.db_connect_timeout_seconds,
        },
    )

    @event.listens_for(engine.sync_engine, "checkout")
    def _replace_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # Instead of pool_pre_ping, which on asyncpg is three round trips per checkout (BEGIN,
        # a query, ROLLBACK: a tenth of an origination's CPU, bench/http_load.py): a connection
        # the server closed (restart, idle timeout) is already known closed to asyncpg, and
        # the pool replaces it without asking the server.
        if record.driver_connection.is_closed():
            raise DisconnectionError("the server closed this connection")

    return engine


# Statements read_rows has compiled for PostgreSQL, by id (the statement is kept alive here):
# its SQL, and each positional parameter's fixed value or the name of the one to bind.
_on_driver: dict[int, tuple[Select[Any], str, list[tuple[str, Any]]]] = {}


class Database:
    """The process's engine and session factory, created lazily (after a worker forks)."""

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._read_engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = make_engine(get_settings())
        return self._engine

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        if self._sessions is None:
            self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        return self._sessions

    async def read_rows(
        self, statement: Select[Any], params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """The rows of one read, in no transaction. On PostgreSQL straight from asyncpg on a
        connection taken from the pool bare, the statement compiled once: SQLAlchemy's
        execution and result processing of GET /v1/loans/{id}'s read cost about three times
        the driver's own work, and a third of the whole request's CPU
        (bench/request_profile.py); its connection object is skipped too. So the
        columns are the driver's values: select none whose type processes results (Rate
        does; UTCDateTime on PostgreSQL does not), or convert it yourself. On SQLite, through
        SQLAlchemy, which turns its text dates into dates; AUTOCOMMIT takes no lock."""
        if self.engine.dialect.name != "postgresql":
            if self._read_engine is None:
                self._read_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            async with self._read_engine.connect() as connection:
                return list((await connection.execute(statement, params)).all())
        known = _on_driver.get(id(statement))
        if known is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            binds = [(name, compiled.binds[name].value) for name in compiled.positiontup or ()]
            known = _on_driver[id(statement)] = (statement, str(compiled), binds)
        _, sql, binds = known
        values = [params[name] if name in params else value for name, value in binds]
        return cast(Sequence[Sequence[Any]], await greenlet_spawn(self._fetch, sql, values))

    def _fetch(self, sql: str, values: list[Any]) -> Any:
        """The checkout, the fetch and the return in the one greenlet the pool may wait in,
        not a greenlet for the checkout and another for the return (with format_minor in
        integers, ``read_loan`` went from 0.391 to 0.349 ms, bench/request_profile.py). No
        transaction is begun on the connection, so handing it back rolls nothing back."""
        pooled = self.engine.sync_engine.raw_connection()
        try:
            driver: Any = pooled.driver_connection
            return await_only(driver.fetch(sql, *values))
        finally:
            pooled.close()

    def forget(self) -> None:
        """Drop (without closing) an engine inherited across fork: its sockets are the
        parent's."""
        self._engine = None
        self._sessions = None
        self._read_engine = None

    async def refresh_statistics(self) -> None:
        """SQLite's planner statistics, which it keeps only when asked: without them, a loan's
        open flags were read through the index on every open flag (a payment took 0.6 s on a
        book of 115,000 open flags: a tester's). ``PRAGMA optimize`` analyses only the tables
        whose queries would gain, and SQLite asks for it once a day on a long-lived connection:
        after the close. PostgreSQL's autovacuum keeps its own."""
        if self.engine.dialect.name != "sqlite":
            return
        async with self.engine.begin() as connection:
            await connection.exec_driver_sql("PRAGMA optimize")

    async def analyse_stale_tables(self) -> None:
        """PostgreSQL's statistics of the tables never analysed, or changed more than their
        size since: autovacuum keeps them, within a minute of a change, where it runs. Where
        it is off, or a bulk load just ended, the close planned its statements for a new
        database's empty tables: one UPDATE of a 20,000-loan book's installments ran for 10
        minutes, holding the payments it locked (a tester's; 18 s for the close once
        analysed). ANALYZE blocks no read or write."""
        if self.engine.dialect.name != "postgresql":
            return
        async with self.engine.begin() as connection:
            stale = await connection.execute(_STALE_TABLES)
            for (name,) in stale.all():
                await connection.execute(text(f'ANALYZE "{name}"'))

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._sessions = None
        self._read_engine = None


# Never analysed (reltuples -1), or more rows changed since than it had then.
_STALE_TABLES = text(
    "SELECT c.relname FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid "
    "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' "
    "AND (c.reltuples < 0 OR s.n_mod_since_analyze > greatest(c.reltuples, 1000))"
)

database = Database()

T = TypeVar("T")


@asynccontextmanager
async def session_scope() -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on any error."""
    async with database.sessions() as session:
        try:
            yield session
            await commit_to_the_end(session)
        except BaseException:
            await session.rollback()
            raise


async def commit_to_the_end(session: AsyncSession) -> None:
    """The commit, seen to its end through a cancellation, which then goes on. Cut short, the
    connection's reset as it went back to the pool (a rollback) was cancelled too, and the pool
    logged that as an error with a traceback: a stop of the server during a close, once in
    about twenty runs of a test in CI; 44 of 300 cancellations of a loop of commits on SQLite,
    by hand, none with the commit seen through."""
    _, cancelled = await to_the_end(session.commit())
    if cancelled:
        raise asyncio.CancelledError


async def to_the_end(work: Awaitable[T]) -> tuple[T, bool]:
    """``work``'s result, awaited to its end through any cancellation of this task, and
    whether one came (the caller goes on with it once its work is safe): a run's start cut
    short after its commit, or its record of a stop cut short by a second stop, left the run
    ``running`` until it went stale."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.cancelled():  # the loop itself is closing: nothing to wait for
                raise
            cancelled = True


def insert_for(session: AsyncSession, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_nothing`` on the session's dialect."""
    return dialect_insert(is_postgres(session), table)


def dialect_insert(postgres: bool, table: Any) -> postgresql.Insert | sqlite.Insert:
    """``insert_for`` without a session: for a statement built once per dialect."""
    return postgresql.insert(table) if postgres else sqlite.insert(table)


# (table, several rows?, keys) of each part -> the statement writing them all: built once, so
# its construction and cache key cost nothing per call. Several rows go in as one array per
# column (unnest): a multi-row VALUES is not cached by SQLAlchemy, it is compiled on every call.
_combined_inserts: dict[tuple[tuple[str, bool, tuple[str, ...]], ...], Executable] = {}


async def insert_together(
    session: AsyncSession, *parts: tuple[Table, list[dict[str, Any]]]
) -> None:
    """Rows of several tables written in one round trip on PostgreSQL: the INSERTs after the
    first are data-modifying CTEs of one statement (each statement is a socket write and a
    read, kernel CPU charged to the API on loopback: bench/http_load.py). On SQLite, one INSERT
    per table. All rows of one part have the same keys; foreign keys between the parts are
    checked when the statement ends, so a parent may be written with its children."""
    if not is_postgres(session):
        for table, rows in parts:
            await session.execute(table.insert(), rows if len(rows) > 1 else rows[0])
        return
    shape = tuple((table.name, len(rows) > 1, tuple(rows[0])) for table, rows in parts)
    statement = _combined_inserts.get(shape)
    if statement is None:
        statement = _combined_inserts[shape] = _combined_insert(
            [table for table, _ in parts], shape
        )
    params: dict[str, Any] = {}
    for part, (table, rows) in enumerate(parts):
        if len(rows) > 1:
            params.update(_as_arrays(table, rows, f"p{part}_"))
        else:
            params.update({f"p{part}_{key}": value for key, value in rows[0].items()})
    await session.execute(statement, params)


def _combined_insert(
    tables: list[Table], shape: tuple[tuple[str, bool, tuple[str, ...]], ...]
) -> Executable:
    def part_insert(part: int) -> postgresql.Insert:
        table, (_, several, keys) = tables[part], shape[part]
        if not several:
            return postgresql.insert(table).values(
                {key: bindparam(f"p{part}_{key}", type_=table.c[key].type) for key in keys}
            )
        arrays = _arrays(table, keys, f"p{part}_")
        columns = [_unnested(table, arrays, key) for key in keys]
        return postgresql.insert(table).from_select(list(keys), select(*columns))

    ctes = [part_insert(part).cte(f"insert_{part}") for part in range(1, len(tables))]
    return part_insert(0).add_cte(*ctes)


def _arrays(table: Table, keys: tuple[str, ...], prefix: str) -> Any:
    """``unnest`` of one bound array per column: rows as columns, one parameter each. JSON
    goes as text (``_as_arrays``): an array of JSON lists would bind as a 2-D array."""

    def array_type(key: str) -> postgresql.ARRAY[Any]:
        is_json = isinstance(table.c[key].type, JSON)
        return postgresql.ARRAY(Text if is_json else table.c[key].type)

    arrays = func.unnest(*(bindparam(f"{prefix}{key}", type_=array_type(key)) for key in keys))
    return arrays.table_valued(*keys).render_derived(name="v")


def _unnested(table: Table, arrays: Any, key: str) -> Any:
    """A column of ``_arrays``, as the table's type (JSON cast back from text)."""
    column = arrays.c[key]
    return sql_cast(column, JSON) if isinstance(table.c[key].type, JSON) else column


def _as_arrays(table: Table, rows: list[dict[str, Any]], prefix: str) -> dict[str, list[Any]]:
    arrays: dict[str, list[Any]] = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if isinstance(table.c[key].type, JSON):
            values = [json.dumps(value) for value in values]
        arrays[f"{prefix}{key}"] = values
    return arrays


_bulk_statements: dict[tuple[Any, ...], Executable] = {}


async def insert_rows(
    session: AsyncSession,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    same: dict[str, Any] | None = None,
    returning: str | None = None,
) -> list[Any]:
    """Many rows of one table (all with the same keys), in one statement of one array per
    column on PostgreSQL: an executemany binds and sends every row's parameters one by one,
    which was half a close worker's CPU when a night raises hundreds of thousands of flags.
    ``same``: the columns every row shares, bound once rather than as arrays of one value.
    Returns the ``returning`` column's values."""
    if not rows:
        return []
    same = same or {}
    if not is_postgres(session):
        statement = table.insert()
        every = [{**row, **same} for row in rows] if same else rows
        if returning is None:
            await session.execute(statement, every)
            return []
        return list(await session.scalars(statement.returning(table.c[returning]), every))
    keys, shared = tuple(rows[0]), tuple(same)
    shape = ("insert", "postgresql", table.name, keys, shared, returning)
    bulk = _bulk_statements.get(shape)
    if bulk is None:
        arrays = _arrays(table, keys, "a_")
        columns = [_unnested(table, arrays, key) for key in keys]
        columns += [bindparam(f"s_{key}", type_=table.c[key].type) for key in shared]
        insert = postgresql.insert(table).from_select([*keys, *shared], select(*columns))
        bulk = _bulk_statements[shape] = (
            insert.returning(table.c[returning]) if returning is not None else insert
        )
    params = {**_as_arrays(table, rows, "a_"), **{f"s_{key}": v for key, v in same.items()}}
    result = await session.execute(bulk, params)
    return list(result.scalars()) if returning is not None else []


async def update_rows(
    session: AsyncSession, table: Table, key: str | tuple[str, ...], rows: list[dict[str, Any]]
) -> None:
    """Set each row's other columns where its ``key`` column (or columns) match: one
    ``UPDATE … FROM unnest`` on PostgreSQL (see ``insert_rows``), an executemany on SQLite."""
    if not rows:
        return
    keys = (key,) if isinstance(key, str) else key
    columns = tuple(rows[0])
    dialect = session.get_bind().dialect.name
    shape = ("update", dialect, table.name, columns, keys)
    bulk = _bulk_statements.get(shape)
    if bulk is None:
        if is_postgres(session):
            v = _arrays(table, columns, "a_")
            bulk = update(table).where(*(table.c[k] == v.c[k] for k in keys))
            bulk = bulk.values({c: _unnested(table, v, c) for c in columns if c not in keys})
        else:
            bulk = update(table).where(*(table.c[k] == bindparam(f"a_{k}") for k in keys))
            bulk = bulk.values({c: bindparam(f"a_{c}") for c in columns if c not in keys})
        _bulk_statements[shape] = bulk
    if is_postgres(session):
        await session.execute(bulk, _as_arrays(table, rows, "a_"))
    else:
        await session.execute(bulk, [{f"a_{c}": row[c] for c in columns} for row in rows])


async def insert_unless_taken(session: AsyncSession, row: object) -> bool:
    """Insert ``row`` (a table whose only constraint is its primary key); False when its key
    is taken, by an earlier insert or a concurrent twin: its savepoint is rolled back and the
    transaction goes on."""
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        return False
    return True


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def execute_counting(
    session: AsyncSession, statement: Executable, params: dict[str, Any] | None = None
) -> int:
    """Execute a DML statement and return how many rows it touched."""
    rowcount = cast(CursorResult[Any], await session.execute(statement, params)).rowcount
    if rowcount < 0 and not is_postgres(session):
        # Python's sqlite3 counts no rows for a statement that opens with WITH (an INSERT of a
        # CTE's rows): SQLite itself does. A close's snapshot counted -1 (a tester's).
        rowcount = int((await session.execute(text("SELECT changes()"))).scalar_one())
    return rowcount
