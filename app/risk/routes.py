from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api.deps import (
    AdminPrincipal,
    DashboardPrincipal,
    MerchantPrincipal,
    PageDep,
    ReaderPrincipal,
    SessionDep,
)
from app.api.pagination import Page, page_of
from app.api.responses import CREATED, LOCATION, POLLED, cached, locate
from app.api.routing import StrictRoute
from app.risk import runs, service
from app.risk.models import FlagStatus
from app.risk.rules import FlagCode, Severity
from app.risk.schemas import (
    Acknowledge,
    FlagRead,
    LoanRiskRead,
    RiskRunCreate,
    RiskRunRead,
    RulesRead,
    RulesUpdate,
)

router = APIRouter(tags=["risk"], route_class=StrictRoute)


@router.get("/v1/risk/rules", response_model=RulesRead, responses=POLLED)
async def get_rules(
    request: Request, session: SessionDep, principal: DashboardPrincipal
) -> Response:
    version, rules = await service.get_rules(session, principal)
    return cached(request, RulesRead(version=version, rules=rules))


@router.put("/v1/risk/rules", response_model=RulesRead)
async def put_rules(body: RulesUpdate, session: SessionDep, principal: AdminPrincipal) -> RulesRead:
    version, rules = await service.put_rules(
        session, principal, rules=body.rules, made_from=body.version
    )
    return RulesRead(version=version, rules=rules)


@router.get("/v1/risk/flags", response_model=Page[FlagRead], responses=POLLED)
async def list_flags(
    request: Request,
    session: SessionDep,
    principal: ReaderPrincipal,
    page: PageDep,
    status: FlagStatus | None = None,
    code: FlagCode | None = None,
    severity: Severity | None = None,
    borrower_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    loan_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
) -> Response:
    """Dashboards and collections poll this: ``ETag``, and 304 on ``If-None-Match``."""
    flags = await service.list_flags(
        session, principal, page=page, status=status, code=code, severity=severity,
        borrower_id=borrower_id, loan_id=loan_id,
    )  # fmt: skip
    return cached(request, page_of(flags, page, FlagRead.from_model))


@router.post("/v1/risk/flags/{flag_id}/acknowledge", response_model=FlagRead)
async def acknowledge(
    flag_id: str, session: SessionDep, principal: MerchantPrincipal, body: Acknowledge | None = None
) -> FlagRead:
    flag = await service.acknowledge(
        session, principal, flag_id=flag_id, note=body.note if body else None
    )
    return FlagRead.from_model(flag)


@router.get("/v1/loans/{loan_id}/risk", response_model=LoanRiskRead, responses=POLLED)
async def loan_risk(
    loan_id: str, request: Request, session: SessionDep, principal: ReaderPrincipal
) -> Response:
    """Collections poll a loan's score and flags: ``ETag``, and 304 on ``If-None-Match``."""
    as_of, score, flags = await service.loan_risk(session, principal, loan_id=loan_id)
    return cached(request, LoanRiskRead(
        loan_id=loan_id, as_of=as_of, score=score.score, grade=score.grade, reasons=score.reasons,
        flags=[FlagRead.from_model(f) for f in flags if f.status == FlagStatus.OPEN],
        history=[FlagRead.from_model(f) for f in flags],
    ))  # fmt: skip


@router.post(
    "/v1/risk/runs",
    status_code=201,
    response_model=RiskRunRead,
    responses={
        **CREATED,
        202: {
            "model": RiskRunRead,
            "description": "Handed to the Celery workers",
            "headers": LOCATION,
        },
    },
)
async def start_run(
    body: RiskRunCreate, principal: AdminPrincipal, response: Response
) -> RiskRunRead:
    run = await runs.start_run(principal, as_of=body.as_of)
    locate(response, f"/v1/risk/runs/{run.id}")
    if run.status == "pending":
        response.status_code = 202
    return RiskRunRead.model_validate(run)


@router.get("/v1/risk/runs/{run_id}", response_model=RiskRunRead, responses=POLLED)
async def get_run(
    run_id: str, request: Request, session: SessionDep, principal: DashboardPrincipal
) -> Response:
    """Polled until it ends, as a close run is."""
    run = await runs.get_run(session, principal, run_id=run_id)
    return cached(request, RiskRunRead.model_validate(run))
