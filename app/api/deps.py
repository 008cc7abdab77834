"""The dependency vocabulary of the routes."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal, hash_key, principals
from app.api.pagination import PageParams, page_params
from app.api_keys.models import ApiKey, Role
from app.db import database
from app.errors import Unauthorized


async def get_session() -> AsyncIterator[AsyncSession]:
    """The request's transaction: committed when the route returns, rolled back on error."""
    async with database.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# Function scope: commit (or fail) before the response is sent, never after the client was
# told it succeeded.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_read_session() -> AsyncIterator[AsyncSession]:
    """For a read of one statement: no transaction, so no BEGIN and COMMIT round trips (two of
    the three of GET /v1/loans/{id}, bench/http_load.py). PostgreSQL's default READ COMMITTED
    gives each statement its own snapshot either way."""
    async with database.read_sessions() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


async def get_principal(
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    key_hash = hash_key(token.strip())
    principal = principals.get(key_hash)
    if principal is not None:
        return principal
    # Its own short session: a route that runs work in separate transactions (the close)
    # must not find the embedded default's single SQLite connection held by authentication.
    async with database.sessions() as session:
        key = await session.scalar(
            select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    if key is None:
        raise Unauthorized("the API key is not valid")
    principal = Principal(api_key_id=key.id, role=Role(key.role), merchant_id=key.merchant_id)
    principals.put(key_hash, principal)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal, scope="function")]
PageDep = Annotated[PageParams, Depends(page_params)]


def _principal_with(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """Refuse the wrong role before the body is validated: a caller who may not use an
    endpoint learns nothing about its input."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        principal.require(*roles)
        return principal

    return dependency


# Admin keys pass every role check.
AdminPrincipal = Annotated[Principal, Depends(_principal_with(), scope="function")]
MerchantPrincipal = Annotated[Principal, Depends(_principal_with(Role.MERCHANT), scope="function")]
DashboardPrincipal = Annotated[
    Principal, Depends(_principal_with(Role.DASHBOARD), scope="function")
]
ReaderPrincipal = Annotated[
    Principal, Depends(_principal_with(Role.MERCHANT, Role.DASHBOARD), scope="function")
]
