"""The dependency vocabulary of the routes."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal, bearer_key_hash, principals
from app.api.pagination import PageParams, page_params
from app.api_keys.models import ApiKey, Role
from app.db import commit_to_the_end, database, is_connection_lost
from app.errors import Unauthorized

# What the request's transaction writes last, before it commits: its Idempotency-Key marked
# applied (app/api/idempotency.py), so the mark commits with the change or not at all.
before_commit: ContextVar[Callable[[AsyncSession], Awaitable[None]] | None] = ContextVar(
    "before_commit", default=None
)


async def get_session() -> AsyncIterator[AsyncSession]:
    """The request's transaction: committed when the route returns, rolled back on error."""
    async with database.sessions() as session:
        try:
            yield session
            if (last := before_commit.get()) is not None:
                await last(session)
            await commit_to_the_end(session)
        except BaseException:
            await session.rollback()
            raise


# Function scope: commit (or fail) before the response is sent, never after the client was
# told it succeeded.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def authenticate(authorization: str | None) -> Principal:
    """The caller named by an ``Authorization: Bearer <api key>`` header, or 401."""
    key_hash = bearer_key_hash(authorization)
    if key_hash is None:
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    principal = principals.get(key_hash)
    if principal is not None:
        return principal
    # Its own short session: a route that runs work in separate transactions (the close)
    # must not find the embedded default's single SQLite connection held by authentication.
    async with database.sessions() as session:
        key = await session.scalar(
            select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    if key is None or principals.revoked(key_hash):
        raise Unauthorized("the API key is not valid")
    principal = Principal(api_key_id=key.id, role=Role(key.role), merchant_id=key.merchant_id)
    principals.put(key_hash, principal)
    return principal


# The principal dependencies read the header from the request themselves: a dependency that
# declares a Header parameter, or depends on another dependency, is one more step of FastAPI's
# dependency solving (each reads the request's query, headers and cookies again); they were a
# fifth of GET /v1/loans/{id}'s CPU (bench/http_load.py). The header is left out of the
# OpenAPI document either way.
async def get_principal(request: Request) -> Principal:
    return await authenticate(request.headers.get("authorization"))


# The dependencies that name the caller. app/api/routing.py calls a route's itself before it
# answers a refusal that came before FastAPI ran them (a body that is not JSON, a query
# parameter the route does not take), so a caller without a valid key or role hears 401 or 403.
PRINCIPAL_DEPENDENCIES: set[Callable[[Request], Awaitable[object]]] = {get_principal}


CurrentPrincipal = Annotated[Principal, Depends(get_principal, scope="function")]
PageDep = Annotated[PageParams, Depends(page_params)]


def _principal_with(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """Refuse the wrong role before the body is validated: a caller who may not use an
    endpoint learns nothing about its input."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request.headers.get("authorization"))
        principal.require(*roles)
        return principal

    PRINCIPAL_DEPENDENCIES.add(dependency)
    return dependency


# Admin keys pass every role check.
AdminPrincipal = Annotated[Principal, Depends(_principal_with(), scope="function")]
MerchantPrincipal = Annotated[Principal, Depends(_principal_with(Role.MERCHANT), scope="function")]
DashboardPrincipal = Annotated[
    Principal, Depends(_principal_with(Role.DASHBOARD), scope="function")
]


@dataclass(frozen=True)
class MetricsReader:
    principal: Principal
    # False when looking the key up found the database gone: the scrape then reads nothing
    # more from it (a host that does not answer would hold it a connect timeout again).
    database_answered: bool


async def _metrics_reader(request: Request) -> MetricsReader:
    """A dashboard or admin key, as ``DashboardPrincipal``; while the database does not answer,
    a key this process has looked up before is taken as it was then (a key revoked since then
    by another process, too): /metrics answered 503 through an outage, when it was needed."""
    authorization = request.headers.get("authorization")
    try:
        reader = MetricsReader(await authenticate(authorization), database_answered=True)
    except Exception as exc:
        key_hash = bearer_key_hash(authorization)
        last_known = principals.last_known(key_hash) if key_hash else None
        if not is_connection_lost(exc) or last_known is None:
            raise
        reader = MetricsReader(last_known, database_answered=False)
    reader.principal.require(Role.DASHBOARD)
    return reader


PRINCIPAL_DEPENDENCIES.add(_metrics_reader)
MetricsReaderDep = Annotated[MetricsReader, Depends(_metrics_reader, scope="function")]
ReaderPrincipal = Annotated[
    Principal, Depends(_principal_with(Role.MERCHANT, Role.DASHBOARD), scope="function")
]
