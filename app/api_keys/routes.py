from fastapi import APIRouter, Request, Response

from app.api.deps import AdminPrincipal, DashboardPrincipal, PageDep, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import POLLED, cached
from app.api.routing import StrictRoute
from app.api_keys import service
from app.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyListed

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"], route_class=StrictRoute)


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(
    body: ApiKeyCreate, session: SessionDep, principal: AdminPrincipal, response: Response
) -> ApiKeyCreated:
    response.headers["Cache-Control"] = "no-store"
    key, secret = await service.create_api_key(
        session, principal, role=body.role, merchant_id=body.merchant_id,
        description=body.description,
    )  # fmt: skip
    return ApiKeyCreated(
        id=key.id, role=body.role, merchant_id=key.merchant_id, description=key.description,
        created_at=key.created_at, key=secret,
    )  # fmt: skip


@router.get("", response_model=Page[ApiKeyListed], responses=POLLED)
async def list_api_keys(
    request: Request, session: SessionDep, principal: DashboardPrincipal, page: PageDep
) -> Response:
    keys = await service.list_api_keys(session, principal, page=page)
    return cached(request, page_of(keys, page, ApiKeyListed.model_validate))


@router.delete("/{key_id}", status_code=204)
async def revoke_api_key(key_id: str, session: SessionDep, principal: AdminPrincipal) -> Response:
    await service.revoke_api_key(session, principal, key_id=key_id)
    return Response(status_code=204)
