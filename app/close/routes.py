from fastapi import APIRouter, Request, Response

from app.api.deps import AdminPrincipal, DashboardPrincipal, ReaderPrincipal, SessionDep
from app.api.fields import IsoDate
from app.api.responses import CREATED, LOCATION, POLLED, cached, locate
from app.api.routing import StrictRoute
from app.close import service
from app.close.models import CloseStatus
from app.close.schemas import BusinessDateRead, CloseRequestRead, CloseRunCreate, CloseRunRead
from app.delinquency import service as delinquency

router = APIRouter(tags=["nightly close"], route_class=StrictRoute)


@router.post(
    "/v1/close-runs",
    status_code=201,
    response_model=CloseRequestRead,
    responses={
        **CREATED,
        202: {
            "model": CloseRequestRead,
            "description": "Handed to the Celery workers",
            "headers": LOCATION,
        },
    },
)
async def create_close_run(
    body: CloseRunCreate, principal: AdminPrincipal, response: Response
) -> CloseRequestRead:
    """Close ``as_of`` and, first, every date missed since the business date (``dates``). On
    the embedded default the close runs before the answer (201); with Celery it is queued
    (202): poll ``GET /v1/close-runs/{as_of}``."""
    run, dates = await service.request_close(principal, as_of=body.as_of)
    locate(response, f"/v1/close-runs/{run.as_of.isoformat()}")
    if run.status in (CloseStatus.PENDING, CloseStatus.RUNNING):
        response.status_code = 202
    return CloseRequestRead(**CloseRunRead.from_model(run).model_dump(), dates=dates)


@router.get("/v1/close-runs/{as_of}", response_model=CloseRunRead, responses=POLLED)
async def get_close_run(
    as_of: IsoDate, request: Request, session: SessionDep, principal: DashboardPrincipal
) -> Response:
    """Polled while the close runs: ``ETag``, and 304 on ``If-None-Match``."""
    run = await service.get_run(session, principal, as_of=as_of)
    return cached(request, CloseRunRead.from_model(run))


@router.get("/v1/business-date", response_model=BusinessDateRead, responses=POLLED)
async def get_business_date(
    request: Request, session: SessionDep, principal: ReaderPrincipal
) -> Response:
    """Dashboards poll this for the night's close: ``ETag``, and 304 on ``If-None-Match``.
    A POS reads the date its promises and plans count from (a merchant key sees the date
    alone)."""
    run = None if principal.is_merchant else await service.latest_run(session)
    return cached(
        request,
        BusinessDateRead(
            business_date=await delinquency.business_date(session),
            last_close_run=CloseRunRead.from_model(run) if run else None,
        ),
    )
