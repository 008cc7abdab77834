from fastapi import APIRouter, Request, Response

from app.api.deps import AdminPrincipal, DashboardPrincipal, PageDep, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import POLLED, cached
from app.api.routing import StrictRoute
from app.merchants import service
from app.merchants.schemas import MerchantCreate, MerchantRead

router = APIRouter(prefix="/v1/merchants", tags=["merchants"], route_class=StrictRoute)


@router.post("", status_code=201, response_model=MerchantRead)
async def create_merchant(
    body: MerchantCreate, session: SessionDep, principal: AdminPrincipal
) -> MerchantRead:
    merchant = await service.create_merchant(session, principal, name=body.name)
    return MerchantRead.model_validate(merchant)


@router.get("", response_model=Page[MerchantRead], responses=POLLED)
async def list_merchants(
    request: Request, session: SessionDep, principal: DashboardPrincipal, page: PageDep
) -> Response:
    merchants = await service.list_merchants(session, principal, page=page)
    return cached(request, page_of(merchants, page, MerchantRead.model_validate))
