"""The ``loanwatch`` command."""

import asyncio
import copy
import json
import os
import re
import signal
import socket
from datetime import date
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer
from alembic.util.exc import CommandError
from prometheus_client import start_http_server
from pydantic import TypeAdapter, ValidationError
from pydantic_settings import SettingsError
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from app import clock
from app import demo as demo_portfolio
from app import migrate as migrations
from app.api.auth import Principal
from app.api.fields import IsoDate
from app.api_keys import service as api_keys_service
from app.api_keys.models import ApiKey, Role
from app.api_keys.schemas import DESCRIPTION_MAX_LENGTH, ApiKeyListed
from app.close import service as close_service
from app.close.models import CloseRun
from app.close.schemas import CloseRunRead
from app.config import get_settings, unknown_variables
from app.db import database, session_scope
from app.delinquency import service as delinquency
from app.errors import LoanwatchError
from app.ops import metrics

if TYPE_CHECKING:
    from celery import Celery

# How long a stopping server lets the requests in flight finish before it cancels them.
SHUTDOWN_GRACE_SECONDS = 5

# Who a command acts as: the operator at the host, an admin.
_OPERATOR = Principal(api_key_id="cli", role=Role.ADMIN)

cli = typer.Typer(help="Loanwatch: loan servicing with early-warning alerts.", no_args_is_help=True)
api_keys = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(api_keys, name="api-keys")


@cli.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    applied = migrations.upgrade()
    _warn_if_shared()
    if applied:
        # A new database and one at the latest schema said the same (a tester's).
        typer.echo(f"applied {len(applied)} migration{'s' * (len(applied) > 1)}: database "
                   f"is at the latest schema, {applied[-1]}", err=True)  # fmt: skip
    else:
        typer.echo("database is at the latest schema: nothing to apply", err=True)


def _upgrade() -> None:
    """Migrate before a command's work, and say so when that upgraded a database in use: an
    admin command run with a new release installed upgraded the schema under the old
    processes without a word (a tester's). A new database is made silently."""
    applied = migrations.upgrade()
    if applied and applied[0] != _FIRST_REVISION:
        which = applied[0] if len(applied) == 1 else f"{applied[0]} to {applied[-1]}"
        typer.echo(f"upgraded the database: applied migrations {which}", err=True)


# The revision a new database begins with (migrations/versions).
_FIRST_REVISION = "0001"


def _warn_if_shared() -> None:
    if (path := migrations.shared_sqlite_file(get_settings().database_url)) is not None:
        typer.echo(
            f"warning: other users of this machine may read {path}, which holds signing "
            f"secrets and phone numbers: chmod 600 {path}",
            err=True,
        )


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.", min=1)] = 1,
) -> None:
    """Migrate, make an admin key at the first start (printed once), and serve the API."""
    import uvicorn

    settings = get_settings()
    if settings.is_sqlite and workers > 1:
        # One SQLite writer and one in-process scheduler: more processes would race both.
        typer.echo("error: the embedded default (SQLite) serves with one worker", err=True)
        raise typer.Exit(2)
    _upgrade()
    _warn_if_shared()
    first = asyncio.run(_first_admin_key())
    if (ahead := asyncio.run(_business_date_ahead())) is not None:
        # Closes and risk runs are refused until the zone's calendar reaches it, and new loans
        # and payments are dated before it: the zone changed under a book (a tester's).
        typer.echo(
            f"warning: the business date {ahead} is after today ({clock.today()}) in "
            f"{settings.timezone}: was LOANWATCH_TIMEZONE changed? Closes wait until that date",
            err=True,
        )
    if first is not None:
        key_id, secret = first
        typer.echo(
            "\nNo admin API key existed; created one. It is shown only now:\n\n"
            f"    {secret}\n\n{_revocable(key_id)}\n",
            err=True,
        )
    serving = partial(
        uvicorn.run,
        "app.main:served",
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        log_config=_log_config(settings.log_level),
        proxy_headers=True,
        # A stop waits this long for the requests in flight, then cancels them: a catch-up a
        # request started would otherwise close every date left before the process exits
        # (minutes), past a supervisor's patience (Docker's 10 s), and a kill then left its
        # runs running, every close refused 409 until they went stale (a tester's).
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        # A worker imports the whole app before it answers the supervisor's ping: 3.5 s on a
        # loaded 2-core machine, where the default 5 s killed the first at every start.
        timeout_worker_healthcheck=30,
    )
    if workers == 1 and metrics.shared_folder() is None:
        serving()
        return
    # The workers are new interpreters started inside the block: each inherits the folder.
    with metrics.counts_shared_between_processes():
        serving()


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, each line dated, and Loanwatch's own lines, from ``level`` (uvicorn's
    names), with their level and logger: they came bare ("GET /v1/business-date lost its
    database connection: ...") and nothing in the server's log was dated, so an operator
    could not place a line (a tester's)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    formatters = config["formatters"]
    formatters["loanwatch"] = {
        **formatters["default"],
        "fmt": "%(levelprefix)s %(name)s%(request)s: %(message)s",
    }
    # Before uvicorn's own message, which may end in a line break ("Exception in ASGI
    # application\n"); after the access line's.
    formatters["default"]["fmt"] = "%(levelprefix)s%(request)s %(message)s"
    formatters["access"]["fmt"] += "%(request)s"
    for formatter in formatters.values():
        formatter["fmt"] = "%(asctime)s " + formatter["fmt"]
        formatter["datefmt"] = "%Y-%m-%dT%H:%M:%S%z"
    handlers = config["handlers"]
    handlers["loanwatch"] = {**handlers["default"], "formatter": "loanwatch"}
    # The request's id (X-Request-ID) in its lines: app/api/stamps.py.
    config["filters"] = {"request": {"()": "app.api.stamps.WithRequestId"}}
    for handler in handlers.values():
        handler["filters"] = ["request"]
    config["loggers"]["loanwatch"] = {
        "handlers": ["loanwatch"],
        # uvicorn's trace is below the standard library's levels.
        "level": "DEBUG" if level == "trace" else level.upper(),
        "propagate": False,
    }
    return config


_ISO_DATE: TypeAdapter[date] = TypeAdapter(IsoDate)


def _iso_date(text: str) -> date:
    """A date as the API takes one, by the API's own rule (strptime took 2018-1-10 too)."""
    try:
        return _ISO_DATE.validate_python(text)
    except ValidationError as exc:
        raise typer.BadParameter(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


@cli.command()
def close(
    as_of: Annotated[
        date,
        typer.Option(
            "--as-of", parser=_iso_date, metavar="YYYY-MM-DD", help="Business date to close."
        ),
    ],
) -> None:
    """Run the nightly close for a date (and every missed date before it), in this process."""
    try:
        # Before the database is made: a mistyped date in an empty folder left a new file.
        close_service.refuse_unclosable(as_of)
        _upgrade()
        run, failed = asyncio.run(_close(as_of))
    except LoanwatchError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    except asyncio.CancelledError:
        typer.echo("close stopped (SIGTERM); run it again", err=True)
        raise typer.Exit(128 + signal.SIGTERM) from None
    except KeyboardInterrupt:
        typer.echo("close stopped (Ctrl-C); run it again", err=True)
        raise typer.Exit(128 + signal.SIGINT) from None
    typer.echo(json.dumps(CloseRunRead.from_model(run).model_dump(mode="json"), indent=2))
    if failed or run.status != "succeeded":
        raise typer.Exit(1)


@cli.command()
def demo(
    loans: Annotated[int, typer.Option(min=1, help="How many loans to generate.")] = 1000,
    as_of: Annotated[
        date | None,
        typer.Option(
            "--as-of",
            parser=_iso_date,
            metavar="YYYY-MM-DD",
            help="Date the portfolio is as of (default: today).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same loans.")] = 1,
) -> None:
    """A synthetic portfolio (borrowers, loans, payments, ledger) for demos and benchmarks."""
    try:
        if as_of is not None:  # before the database is made, as for a close
            demo_portfolio.refuse_as_of(as_of)
        _upgrade()
        summary = asyncio.run(demo_portfolio.run_demo(loans, as_of=as_of, seed=seed))
    except ValidationError:
        raise  # a setting it cannot use: main() names it in a line
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary.describe())


def _queues(value: str) -> str:
    """Queues the service publishes to: a worker on another consumes nothing, and one on
    "bogus" never delivered a webhook, with no word of it (a tester's)."""
    from workers.celery_app import celery

    known = [queue.name for queue in celery.conf.task_queues]
    names = [name.strip() for name in value.split(",")]
    if any(name not in known for name in names):
        raise typer.BadParameter(f"{', '.join(known)}, or {','.join(known)}")
    return ",".join(names)


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes.", min=1, max=512)] = 2,
    queues: Annotated[
        str,
        typer.Option(
            help="celery (the close, housekeeping), webhooks (delivery), or both.",
            callback=_queues,
        ),
    ] = "celery,webhooks",
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname",
            "-n",
            help="The worker's node name (Celery's -n, e.g. webhooks@%h): two workers on one "
            "host need their own.",
        ),
    ] = None,
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Serve the worker's counters (webhook attempts) for Prometheus on this port; "
            "needs PROMETHEUS_MULTIPROC_DIR. 0: not served.",
            min=0,
            max=65535,
        ),
    ] = 0,
    metrics_host: Annotated[str, typer.Option(help="Interface of --metrics-port.")] = "127.0.0.1",
) -> None:
    """Run a Celery worker (close chunks, webhooks, housekeeping)."""
    from workers.celery_app import celery

    if metrics_port:
        # The pool's processes are forks of this one, which imported prometheus_client
        # already: only a folder set before this process started reaches them.
        if metrics.shared_folder() is None:
            typer.echo(
                f"error: --metrics-port needs {metrics.MULTIPROCESS_DIR} set to a folder of "
                "this worker's own when it starts",
                err=True,
            )
            raise typer.Exit(2)
        with metrics.counts_shared_between_processes():
            try:
                start_http_server(metrics_port, addr=metrics_host, registry=metrics.counts())
            except OSError as exc:  # in use, or a host that does not resolve
                typer.echo(
                    f"error: --metrics-port {metrics_port} on {metrics_host}: {exc}", err=True
                )
                raise typer.Exit(2) from None
            _run_worker(celery, concurrency, queues, hostname)
        return
    _run_worker(celery, concurrency, queues, hostname)


def _run_worker(celery: "Celery", concurrency: int, queues: str, hostname: str | None) -> None:
    arguments = ["worker", "--loglevel=info", f"--concurrency={concurrency}", f"--queues={queues}"]
    if hostname:
        arguments.append(f"--hostname={hostname}")
    celery.worker_main(arguments)


@cli.command()
def beat(
    schedule: Annotated[
        str,
        typer.Option(
            help="The file in which beat keeps each job's last run (Celery's --schedule), in "
            "a folder it may write.",
        ),
    ] = "celerybeat-schedule",
) -> None:
    """Run Celery beat: the nightly close and periodic jobs."""
    folder = os.path.dirname(os.path.abspath(schedule))
    if not os.access(folder, os.W_OK | os.X_OK):
        # Celery's own answer was a 555-line traceback (a re-verifier's).
        typer.echo(f"error: --schedule: cannot write in {folder}", err=True)
        raise typer.Exit(2)
    from workers.celery_app import celery

    celery.start(["beat", "--loglevel=info", f"--schedule={schedule}"])


@api_keys.command("create")
def create_api_key(
    role: Annotated[Role, typer.Option(help="admin, merchant, dashboard or gateway.")],
    merchant_id: Annotated[str | None, typer.Option(help="The merchant of a merchant key.")] = None,
    description: Annotated[
        str | None, typer.Option(help="What the key is for (at most 200 characters).")
    ] = None,
) -> None:
    """Create an API key and print the secret alone on stdout."""
    if merchant_id is not None and not merchant_id.strip():
        typer.echo("error: --merchant-id is empty", err=True)
        raise typer.Exit(2)
    if description is not None and len(description) > DESCRIPTION_MAX_LENGTH:
        # As the API refuses it: SQLite stored 5,000 characters, PostgreSQL told a database
        # error (a tester's).
        typer.echo(f"error: --description is over {DESCRIPTION_MAX_LENGTH} characters", err=True)
        raise typer.Exit(2)
    _upgrade()
    try:
        key_id, secret = asyncio.run(_create_key(role, merchant_id, description))
    except LoanwatchError as exc:
        # The API's field is the command's option (it named merchant_id: a tester's).
        detail = re.sub(r"\bmerchant_id\b", "--merchant-id", exc.detail)
        typer.echo(f"error: {detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(_revocable(key_id), err=True)
    print(secret)


@api_keys.command("list")
def list_api_keys() -> None:
    """Every key, revoked ones too, a JSON object a line (id, role, merchant_id, description,
    created_at, revoked_at): never a secret, which is not stored."""
    _upgrade()
    for key in asyncio.run(_every_key()):
        print(ApiKeyListed.model_validate(key).model_dump_json())


@api_keys.command("revoke")
def revoke_api_key(key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")]) -> None:
    """Revoke an API key: refused from then on, by every process within seconds."""
    _upgrade()
    try:
        asyncio.run(_revoke_key(key_id))
    except LoanwatchError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{key_id} revoked", err=True)


def _revocable(key_id: str) -> str:
    # The secret alone goes to stdout for scripts; without its id no key the CLI made could be
    # revoked, the first-start admin key included (a tester's).
    return f"key id {key_id} (to revoke it: loanwatch api-keys revoke {key_id})"


async def _close(as_of: date) -> tuple[CloseRun, bool]:
    """The date's run as recorded, and whether this close failed: a failure before its run was
    written (a rerun of a date closed) left the last attempt's success to print, and the
    command exited 0 after "close failed" (a tester's)."""
    # SIGTERM (kill, timeout, systemd) stops the close as Ctrl-C does, its run recorded
    # failed: it ended the process where it stood, the run left running and every close
    # refused 409 until it went stale (a tester's).
    closing = asyncio.current_task()
    assert closing is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, closing.cancel)
    failed = False
    try:
        async with session_scope() as session:
            dates = await close_service.plan_close(session, as_of=as_of)
        await close_service.run_dates_in_process(dates)
    except (LoanwatchError, DBAPIError):
        raise  # told in a line by main(); a database it cannot write records no run either
    except Exception as exc:
        # Also recorded on the failed run, printed below.
        typer.echo(f"close failed: {type(exc).__name__}: {exc}", err=True)
        failed = True
    try:
        async with session_scope() as session:
            return await close_service.get_run(session, _OPERATOR, as_of=as_of), failed
    finally:
        await database.dispose()


async def _create_key(
    role: Role, merchant_id: str | None, description: str | None
) -> tuple[str, str]:
    try:
        async with session_scope() as session:
            key, secret = await api_keys_service.issue_key(
                session, role=role, merchant_id=merchant_id, description=description
            )
        return key.id, secret
    finally:
        await database.dispose()


async def _every_key() -> list[ApiKey]:
    try:
        async with session_scope() as session:
            return await api_keys_service.every_api_key(session)
    finally:
        await database.dispose()


async def _revoke_key(key_id: str) -> None:
    try:
        async with session_scope() as session:
            await api_keys_service.revoke_api_key(session, _OPERATOR, key_id=key_id)
    finally:
        await database.dispose()


async def _business_date_ahead() -> date | None:
    """The business date, when it is after today in the configured zone."""
    try:
        async with session_scope() as session:
            business_date = await delinquency.business_date(session)
        return business_date if business_date and business_date > clock.today() else None
    finally:
        await database.dispose()


async def _first_admin_key() -> tuple[str, str] | None:
    try:
        async with session_scope() as session:
            # A write that changes nothing: a database the service can read but not write (a
            # read-only file, a standby) stops the start here, not every write later with a
            # 500 while /readyz says ok (a tester's).
            await session.execute(text("UPDATE alembic_version SET version_num = version_num"))
            made, in_force = await api_keys_service.admin_keys(session)
            if made:
                # Every admin key revoked is an operator's choice, not a first start: a key
                # made then, unasked, went to the service's log at each restart (a tester's).
                if not in_force:
                    typer.echo(
                        "warning: every admin API key is revoked; `loanwatch api-keys create "
                        "--role admin` makes one",
                        err=True,
                    )
                return None
            key, secret = await api_keys_service.issue_key(
                session, role=Role.ADMIN, description="created at first start"
            )
            return key.id, secret
    finally:
        await database.dispose()


def _database_failure(exc: Exception) -> str:
    if isinstance(exc, DBAPIError):
        return str(exc.orig)
    if isinstance(exc, migrations.SQLiteFileError):
        return str(exc)  # it says what failed
    return f"{type(exc).__name__}: {exc}"


def main() -> None:
    """The command, with a configuration or a database it cannot use told in a line or two
    rather than a traceback of hundreds."""
    for name, meant in unknown_variables(os.environ):
        hint = f" (did you mean {meant}?)" if meant else ""
        typer.echo(f"warning: {name} is no setting and is ignored{hint}", err=True)
    try:
        cli()
    except ValidationError as exc:
        for error in exc.errors():
            # A check across settings has no place of its own: its message names them.
            name = "__".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            line = f"error: LOANWATCH_{name}: {message}" if name else f"error: {message}"
            typer.echo(line, err=True)
        raise SystemExit(2) from None
    except SettingsError as exc:  # a nested setting that is not JSON (LOANWATCH_CREDIT=x)
        # pydantic-settings names the field, not the variable: say which, and the usual form.
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"LOANWATCH_{field.group(1).upper()}" if field else "a setting"
        typer.echo(
            f"error: {name}: not a JSON object; set its parts as {name}__PART instead", err=True
        )
        raise SystemExit(2) from None
    except CommandError as exc:
        # Its revision unknown here: a database a newer Loanwatch migrated.
        url = make_url(get_settings().database_url).render_as_string(hide_password=True)
        typer.echo(
            f"error: the database at {url}: {exc}; was it migrated by a newer Loanwatch?",
            err=True,
        )
        raise SystemExit(1) from None
    except (DBAPIError, ConnectionError, socket.gaierror, migrations.SQLiteFileError) as exc:
        reason = _database_failure(exc)
        url = make_url(get_settings().database_url).render_as_string(hide_password=True)
        typer.echo(f"error: the database at {url}: {reason.splitlines()[0]}", err=True)
        raise SystemExit(1) from None
