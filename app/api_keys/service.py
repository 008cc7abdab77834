from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal, generate_key, hash_key, principals
from app.api.pagination import PageParams
from app.api_keys.models import ApiKey, Role
from app.db import utc_now, utc_text
from app.errors import InvalidRequest, NotFound
from app.ids import new_id
from app.merchants import service as merchants_service


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    title = "API key not found"


async def issue_key(
    session: AsyncSession,
    *,
    role: Role,
    merchant_id: str | None = None,
    description: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its secret; only the hash is stored. Used by the API and the CLI."""
    if role is Role.MERCHANT:
        if merchant_id is None:
            raise InvalidRequest.field("merchant_id", "a merchant key needs a merchant_id")
        await merchants_service.get_merchant(session, merchant_id)
    elif merchant_id is not None:
        raise InvalidRequest.field("merchant_id", "only merchant keys are bound to a merchant")
    secret = generate_key()
    key = ApiKey(
        id=new_id("key"),
        key_hash=hash_key(secret),
        role=role,
        merchant_id=merchant_id,
        description=description,
        created_at=utc_now(),
    )
    session.add(key)
    await session.flush()
    return key, secret


async def create_api_key(
    session: AsyncSession,
    principal: Principal,
    *,
    role: Role,
    merchant_id: str | None,
    description: str | None,
) -> tuple[ApiKey, str]:
    principal.require(Role.ADMIN)
    if role is Role.MERCHANT and merchant_id is not None:
        try:
            await merchants_service.get_merchant(session, merchant_id)
        except merchants_service.MerchantNotFound:
            raise InvalidRequest.field("merchant_id", "no such merchant") from None
    return await issue_key(session, role=role, merchant_id=merchant_id, description=description)


async def list_api_keys(
    session: AsyncSession, principal: Principal, *, page: PageParams
) -> list[ApiKey]:
    """Every key, revoked ones included, without its secret (only its hash is stored): how an
    admin finds the id of a key to revoke, the first-start one and those the CLI made too. A
    dashboard reads it too, as it reads everything (SPEC)."""
    principal.require(Role.DASHBOARD)
    query = select(ApiKey).order_by(ApiKey.id).limit(page.limit + 1)
    if page.after_id:
        query = query.where(ApiKey.id > page.after_id)
    return list(await session.scalars(query))


async def every_api_key(session: AsyncSession) -> list[ApiKey]:
    """Every key, revoked ones included, by id: for the operator at the host (the CLI)."""
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.id)))


async def revoke_api_key(session: AsyncSession, principal: Principal, *, key_id: str) -> None:
    principal.require(Role.ADMIN)
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise ApiKeyNotFound(f"API key {key_id} does not exist")
    if key.revoked_at is not None:  # gone for its callers, so gone here too, but say why
        revoked_at = utc_text(key.revoked_at)
        raise ApiKeyNotFound(f"API key {key_id} was revoked at {revoked_at}")
    key.revoked_at = utc_now()
    principals.revoke(key.key_hash)


async def admin_keys(session: AsyncSession) -> tuple[int, int]:
    """How many admin keys were ever made, and how many of them are in force."""
    in_force = func.count(case((ApiKey.revoked_at.is_(None), 1)))
    made, held = (
        await session.execute(select(func.count(), in_force).where(ApiKey.role == Role.ADMIN))
    ).one()
    return made, held
