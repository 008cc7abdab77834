from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api.deps import AdminPrincipal, MerchantPrincipal, PageDep, ReaderPrincipal, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import CREATED, POLLED, PRECONDITION, cached, etagged, locate, precondition
from app.api.routing import StrictRoute
from app.borrowers import service
from app.borrowers.schemas import BorrowerCreate, BorrowerRead, BorrowerUpdate

router = APIRouter(prefix="/v1/borrowers", tags=["borrowers"], route_class=StrictRoute)


@router.post("", status_code=201, response_model=BorrowerRead, responses=CREATED)
async def create_borrower(
    body: BorrowerCreate, session: SessionDep, principal: MerchantPrincipal, response: Response
) -> BorrowerRead:
    view = await service.create_borrower(
        session, principal, external_id=body.external_id, name=body.name, phone=body.phone,
        monthly_income=body.monthly_income, merchant_id=body.merchant_id, currency=body.currency,
    )  # fmt: skip
    locate(response, f"/v1/borrowers/{view.borrower.id}")
    return BorrowerRead.from_view(view)


@router.get("", response_model=Page[BorrowerRead], responses=POLLED)
async def list_borrowers(
    request: Request,
    session: SessionDep,
    principal: ReaderPrincipal,
    page: PageDep,
    external_id: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> Response:
    """Collections poll their borrowers' grades and flags: ``ETag``, and 304 on
    ``If-None-Match``."""
    views = await service.list_borrowers(session, principal, page=page, external_id=external_id)
    return cached(
        request, page_of(views, page, BorrowerRead.from_view, key=lambda v: v.borrower.id)
    )


@router.get("/{borrower_id}", response_model=BorrowerRead, responses=POLLED)
async def get_borrower(
    borrower_id: str, request: Request, session: SessionDep, principal: ReaderPrincipal
) -> Response:
    """Collections poll a borrower's flags and limit: ``ETag``, and 304 on ``If-None-Match``."""
    view = await service.view_borrower(session, principal, borrower_id=borrower_id)
    return cached(request, BorrowerRead.from_view(view))


@router.patch(
    "/{borrower_id}",
    response_model=BorrowerRead,
    responses=PRECONDITION,
)
async def update_borrower(
    borrower_id: str,
    body: BorrowerUpdate,
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
) -> Response:
    view = await service.set_credit_limit(
        session, principal, borrower_id=borrower_id, credit_limit=body.credit_limit,
        precondition=precondition(request, BorrowerRead.from_view),
    )  # fmt: skip
    # Its ETag, for the next conditional PATCH without a GET in between.
    return etagged([], BorrowerRead.from_view(view))
