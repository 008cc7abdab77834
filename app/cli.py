"""The ``loanwatch`` command."""

import asyncio
from typing import Annotated

import typer

from app import migrate as migrations
from app.api_keys import service as api_keys_service
from app.api_keys.models import Role
from app.config import get_settings
from app.db import database, session_scope
from app.errors import LoanwatchError

cli = typer.Typer(help="Loanwatch: loan servicing with early-warning alerts.", no_args_is_help=True)
api_keys = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(api_keys, name="api-keys")


@cli.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    migrations.upgrade()
    typer.echo("database is at the latest schema", err=True)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Migrate, make sure an admin key exists, and serve the API."""
    import uvicorn

    migrations.upgrade()
    secret = asyncio.run(_first_admin_key())
    if secret is not None:
        typer.echo(
            f"\nNo admin API key existed; created one. It is shown only now:\n\n    {secret}\n",
            err=True,
        )
    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        proxy_headers=True,
    )


@api_keys.command("create")
def create_api_key(
    role: Annotated[Role, typer.Option(help="admin, merchant, dashboard or gateway.")],
    merchant_id: Annotated[str | None, typer.Option(help="The merchant of a merchant key.")] = None,
    description: Annotated[str | None, typer.Option(help="What the key is for.")] = None,
) -> None:
    """Create an API key and print the secret alone on stdout."""
    migrations.upgrade()
    try:
        secret = asyncio.run(_create_key(role, merchant_id, description))
    except LoanwatchError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    print(secret)


async def _create_key(role: Role, merchant_id: str | None, description: str | None) -> str:
    try:
        async with session_scope() as session:
            _, secret = await api_keys_service.issue_key(
                session, role=role, merchant_id=merchant_id, description=description
            )
        return secret
    finally:
        await database.dispose()


async def _first_admin_key() -> str | None:
    try:
        async with session_scope() as session:
            if await api_keys_service.has_admin_key(session):
                return None
            _, secret = await api_keys_service.issue_key(
                session, role=Role.ADMIN, description="created at first start"
            )
            return secret
    finally:
        await database.dispose()


def main() -> None:
    cli()
