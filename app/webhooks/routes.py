from fastapi import APIRouter, FastAPI, Request, Response

from app.api.deps import AdminPrincipal, DashboardPrincipal, PageDep, SessionDep
from app.api.fields import NoFields, SecretRotation
from app.api.openapi import required_header
from app.api.pagination import Page, page_of
from app.api.responses import CREATED, POLLED, PRECONDITION, cached, etagged, locate, precondition
from app.api.routing import StrictRoute
from app.events.schemas import EventRead
from app.webhooks import service
from app.webhooks.schemas import (
    DeliveryRead,
    EndpointCreate,
    EndpointRead,
    EndpointUpdate,
    EndpointWithSecret,
    Queued,
    RecoverRequest,
    RedeliverRequest,
    WebhookPayload,
)

router = APIRouter(tags=["webhooks"], route_class=StrictRoute)
PREFIX = "/v1/webhook-endpoints"


@router.post(PREFIX, status_code=201, response_model=EndpointWithSecret, responses=CREATED)
async def create_endpoint(
    body: EndpointCreate, session: SessionDep, principal: AdminPrincipal, response: Response
) -> EndpointWithSecret:
    response.headers["Cache-Control"] = "no-store"
    view = await service.create_endpoint(
        session, principal, url=body.url, event_types=body.event_types,
        description=body.description, enabled=body.enabled,
    )  # fmt: skip
    locate(response, f"{PREFIX}/{view.endpoint.id}")
    return EndpointWithSecret.with_secret(view)


@router.get(PREFIX, response_model=Page[EndpointRead], responses=POLLED)
async def list_endpoints(
    request: Request, session: SessionDep, principal: DashboardPrincipal, page: PageDep
) -> Response:
    views = await service.list_endpoints(session, principal, page=page)
    return cached(
        request, page_of(views, page, EndpointRead.from_view, key=lambda v: v.endpoint.id)
    )


@router.get(PREFIX + "/{endpoint_id}", response_model=EndpointRead, responses=POLLED)
async def get_endpoint(
    endpoint_id: str, request: Request, session: SessionDep, principal: DashboardPrincipal
) -> Response:
    view = await service.get_endpoint(session, principal, endpoint_id=endpoint_id)
    return cached(request, EndpointRead.from_view(view))


@router.patch(
    PREFIX + "/{endpoint_id}",
    response_model=EndpointRead,
    responses=PRECONDITION,
)
async def update_endpoint(
    endpoint_id: str,
    body: EndpointUpdate,
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
) -> Response:
    view = await service.update_endpoint(
        session, principal, endpoint_id=endpoint_id, changes=body.model_dump(exclude_unset=True),
        precondition=precondition(request, EndpointRead.from_view),
    )  # fmt: skip
    # Its ETag, for the next conditional PATCH without a GET in between.
    return etagged([], EndpointRead.from_view(view))


@router.delete(PREFIX + "/{endpoint_id}", status_code=204)
async def delete_endpoint(
    endpoint_id: str, session: SessionDep, principal: AdminPrincipal
) -> Response:
    await service.delete_endpoint(session, principal, endpoint_id=endpoint_id)
    return Response(status_code=204)


@router.post(PREFIX + "/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret)
async def rotate_secret(
    endpoint_id: str,
    session: SessionDep,
    principal: AdminPrincipal,
    response: Response,
    body: SecretRotation | None = None,
) -> EndpointWithSecret:
    response.headers["Cache-Control"] = "no-store"
    retire = body is not None and body.retire_previous
    view = await service.rotate_secret(
        session, principal, endpoint_id=endpoint_id, retire_previous=retire
    )
    return EndpointWithSecret.with_secret(view)


@router.post(PREFIX + "/{endpoint_id}/test", status_code=202, response_model=EventRead)
async def send_test(
    endpoint_id: str, session: SessionDep, principal: AdminPrincipal, body: NoFields | None = None
) -> EventRead:
    event = await service.send_test_event(session, principal, endpoint_id=endpoint_id)
    return EventRead.from_model(event)


@router.get(
    PREFIX + "/{endpoint_id}/deliveries", response_model=Page[DeliveryRead], responses=POLLED
)
async def list_deliveries(
    endpoint_id: str,
    request: Request,
    session: SessionDep,
    principal: DashboardPrincipal,
    page: PageDep,
) -> Response:
    """The endpoint's delivery log, polled by operators: ``ETag``, and 304 on
    ``If-None-Match``."""
    views = await service.list_deliveries(session, principal, endpoint_id=endpoint_id, page=page)
    return cached(
        request, page_of(views, page, DeliveryRead.from_view, key=lambda v: str(v.delivery.id))
    )


@router.post(PREFIX + "/{endpoint_id}/recover", status_code=202, response_model=Queued)
async def recover(
    endpoint_id: str, body: RecoverRequest, session: SessionDep, principal: AdminPrincipal
) -> Queued:
    count = await service.recover(session, principal, endpoint_id=endpoint_id, since=body.since)
    return Queued(deliveries=count)


@router.post("/v1/events/{event_id}/redeliver", status_code=202, response_model=Queued)
async def redeliver(
    event_id: str,
    session: SessionDep,
    principal: AdminPrincipal,
    body: RedeliverRequest | None = None,
) -> Queued:
    count = await service.redeliver(
        session, principal, event_id=event_id, endpoint_id=body.endpoint_id if body else None
    )
    return Queued(deliveries=count)


def describe_deliveries(app: FastAPI) -> None:
    """What subscribers receive, in the OpenAPI document's ``webhooks``."""

    @app.webhooks.post(
        "event",
        openapi_extra={"parameters": [
            required_header("webhook-id", "The event's id: the same on every retry"),
            required_header("webhook-timestamp", "Unix seconds of this attempt"),
            required_header("webhook-signature", "`v1,<base64 HMAC-SHA256>` with the "
                              "endpoint's secret (and its previous one, after a rotation)"),
        ]},
    )  # fmt: skip
    def event(body: WebhookPayload) -> None:
        """Each event, POSTed to every enabled endpoint subscribed to its type and signed per
        Standard Webhooks. Answer 2xx within the delivery timeout (10 s by default); anything
        else is retried for about four days (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 10 h,
        24 h, 24 h)."""
