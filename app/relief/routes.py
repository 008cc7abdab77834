"""Restructures under their loan (``/v1/loans/{id}/restructures/...``) and, for a caller that
holds only the restructure's id, the same reads and decisions at ``/v1/restructures/{id}``."""

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.deps import AdminPrincipal, MerchantPrincipal, PageDep, ReaderPrincipal, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import CREATED, POLLED, cached, locate
from app.api.routing import StrictRoute
from app.relief import service
from app.relief.models import Restructure
from app.relief.schemas import RestructureCreate, RestructureDecision, RestructureRead

router = APIRouter(tags=["relief"], route_class=StrictRoute)


async def _read(session: AsyncSession, restructure: Restructure) -> RestructureRead:
    carried = await service.plan_promises(session, [restructure.id])
    return RestructureRead.from_model(restructure, carried.get(restructure.id))


@router.post(
    "/v1/loans/{loan_id}/restructures",
    status_code=201,
    response_model=RestructureRead,
    responses=CREATED,
)
async def request_restructure(
    loan_id: str,
    body: RestructureCreate,
    session: SessionDep,
    principal: MerchantPrincipal,
    response: Response,
) -> RestructureRead:
    installments = body.installments
    restructure = await service.request_restructure(
        session, principal, loan_id=loan_id, kind=body.kind, reason=body.reason,
        installments=None if installments is None else [(i.due_on, i.amount) for i in installments],
        amount=body.amount, months=body.months,
    )  # fmt: skip
    locate(response, f"/v1/restructures/{restructure.id}")
    return await _read(session, restructure)


@router.get(
    "/v1/loans/{loan_id}/restructures", response_model=Page[RestructureRead], responses=POLLED
)
async def list_restructures(
    loan_id: str, request: Request, session: SessionDep, principal: ReaderPrincipal, page: PageDep
) -> Response:
    """Collections poll a loan's relief and its plan: ``ETag``, and 304 on ``If-None-Match``."""
    found = await service.list_restructures(session, principal, loan_id=loan_id, page=page)
    carried = await service.plan_promises(session, [r.id for r in found[: page.limit]])
    return cached(
        request, page_of(found, page, lambda r: RestructureRead.from_model(r, carried.get(r.id)))
    )


async def _get(
    session: AsyncSession, principal: Principal, restructure_id: str, loan_id: str | None
) -> RestructureRead:
    restructure = await service.get_restructure(
        session, principal, restructure_id=restructure_id, loan_id=loan_id
    )
    return await _read(session, restructure)


Decide = Callable[..., Awaitable[Restructure]]


async def _decide(
    decide: Decide,
    session: AsyncSession,
    principal: Principal,
    restructure_id: str,
    loan_id: str | None,
    body: RestructureDecision | None,
) -> RestructureRead:
    restructure = await decide(
        session, principal, restructure_id=restructure_id, loan_id=loan_id,
        note=body.note if body else None,
    )  # fmt: skip
    return await _read(session, restructure)


@router.get(
    "/v1/loans/{loan_id}/restructures/{restructure_id}",
    response_model=RestructureRead,
    responses=POLLED,
)
async def get_loan_restructure(
    loan_id: str,
    restructure_id: str,
    request: Request,
    session: SessionDep,
    principal: ReaderPrincipal,
) -> Response:
    """A plan's progress, polled as the list is: ``ETag``, and 304 on ``If-None-Match``."""
    return cached(request, await _get(session, principal, restructure_id, loan_id))


@router.post(
    "/v1/loans/{loan_id}/restructures/{restructure_id}/approve", response_model=RestructureRead
)
async def approve_loan_restructure(
    loan_id: str,
    restructure_id: str,
    session: SessionDep,
    principal: AdminPrincipal,
    body: RestructureDecision | None = None,
) -> RestructureRead:
    return await _decide(service.approve, session, principal, restructure_id, loan_id, body)


@router.post(
    "/v1/loans/{loan_id}/restructures/{restructure_id}/reject", response_model=RestructureRead
)
async def reject_loan_restructure(
    loan_id: str,
    restructure_id: str,
    session: SessionDep,
    principal: AdminPrincipal,
    body: RestructureDecision | None = None,
) -> RestructureRead:
    return await _decide(service.reject, session, principal, restructure_id, loan_id, body)


@router.get("/v1/restructures/{restructure_id}", response_model=RestructureRead, responses=POLLED)
async def get_restructure(
    restructure_id: str, request: Request, session: SessionDep, principal: ReaderPrincipal
) -> Response:
    return cached(request, await _get(session, principal, restructure_id, None))


@router.post("/v1/restructures/{restructure_id}/approve", response_model=RestructureRead)
async def approve_restructure(
    restructure_id: str,
    session: SessionDep,
    principal: AdminPrincipal,
    body: RestructureDecision | None = None,
) -> RestructureRead:
    return await _decide(service.approve, session, principal, restructure_id, None, body)


@router.post("/v1/restructures/{restructure_id}/reject", response_model=RestructureRead)
async def reject_restructure(
    restructure_id: str,
    session: SessionDep,
    principal: AdminPrincipal,
    body: RestructureDecision | None = None,
) -> RestructureRead:
    return await _decide(service.reject, session, principal, restructure_id, None, body)
