from fastapi import APIRouter, Request, Response

from app.api.deps import MerchantPrincipal, PageDep, ReaderPrincipal, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import POLLED, cached
from app.api.routing import StrictRoute
from app.promises import service
from app.promises.schemas import PromiseCreate, PromiseRead

router = APIRouter(tags=["promises"], route_class=StrictRoute)


@router.post("/v1/loans/{loan_id}/promises", status_code=201, response_model=PromiseRead)
async def create_promise(
    loan_id: str, body: PromiseCreate, session: SessionDep, principal: MerchantPrincipal
) -> PromiseRead:
    promise = await service.create_promise(
        session, principal, loan_id=loan_id, amount=body.amount, due_on=body.due_on,
        note=body.note,
    )  # fmt: skip
    return PromiseRead.from_model(promise)


@router.get("/v1/loans/{loan_id}/promises", response_model=Page[PromiseRead], responses=POLLED)
async def list_promises(
    loan_id: str, request: Request, session: SessionDep, principal: ReaderPrincipal, page: PageDep
) -> Response:
    """Collections poll a loan's promises: ``ETag``, and 304 on ``If-None-Match``."""
    promises = await service.list_promises(session, principal, loan_id=loan_id, page=page)
    return cached(request, page_of(promises, page, PromiseRead.from_model))
