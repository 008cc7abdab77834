from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.errors import NotFound
from app.ids import new_id
from app.merchants.models import Merchant


class MerchantNotFound(NotFound):
    code = "merchant_not_found"


async def create_merchant(session: AsyncSession, principal: Principal, *, name: str) -> Merchant:
    principal.require(Role.ADMIN)
    merchant = Merchant(id=new_id("mer"), name=name)
    session.add(merchant)
    await session.flush()
    return merchant


async def get_merchant(session: AsyncSession, merchant_id: str) -> Merchant:
    merchant = await session.get(Merchant, merchant_id)
    if merchant is None:
        raise MerchantNotFound(f"merchant {merchant_id} does not exist")
    return merchant


async def list_merchants(
    session: AsyncSession, principal: Principal, *, page: PageParams
) -> list[Merchant]:
    principal.require(Role.DASHBOARD)
    query = select(Merchant).order_by(Merchant.id).limit(page.limit + 1)
    if page.after_id:
        query = query.where(Merchant.id > page.after_id)
    return list(await session.scalars(query))
