from fastapi import APIRouter, Request, Response

from app.api.deps import AdminPrincipal, DashboardPrincipal, PageDep, SessionDep, authenticate
from app.api.fields import SecretRotation
from app.api.openapi import inlined_schema, required_header
from app.api.pagination import Page, page_of
from app.api.responses import POLLED, cached
from app.api.routing import StrictRoute
from app.api_keys.models import Role
from app.gateways import service
from app.gateways.models import WEBHOOK_ID_MAX_LENGTH
from app.gateways.schemas import (
    GatewayCreate,
    GatewayRead,
    GatewayWithSecret,
    Notification,
    NotificationResult,
)

router = APIRouter(tags=["payment gateways"], route_class=StrictRoute)


# The body is read raw, its signature checked before it is parsed: FastAPI cannot see it.
SIGNED_NOTIFICATION = {
    "parameters": [
        required_header(
            "webhook-id",
            "The notification's unique id: a repeat changes nothing",
            max_length=WEBHOOK_ID_MAX_LENGTH,
        ),
        required_header(
            "webhook-timestamp", "Unix seconds, within 5 minutes of the server's clock"
        ),
        required_header(
            "webhook-signature",
            "`v1,<base64 HMAC-SHA256>` with the gateway's secret, per Standard Webhooks",
        ),
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inlined_schema(Notification)}},
    },
}


@router.post("/v1/gateways", status_code=201, response_model=GatewayWithSecret)
async def register_gateway(
    body: GatewayCreate, session: SessionDep, principal: AdminPrincipal, response: Response
) -> GatewayWithSecret:
    response.headers["Cache-Control"] = "no-store"
    gateway = await service.register(session, principal, name=body.name)
    return GatewayWithSecret.with_secret(gateway)


@router.get("/v1/gateways", response_model=Page[GatewayRead], responses=POLLED)
async def list_gateways(
    request: Request, session: SessionDep, principal: DashboardPrincipal, page: PageDep
) -> Response:
    gateways = await service.list_gateways(session, principal, page=page)
    return cached(request, page_of(gateways, page, GatewayRead.from_model, key=lambda g: g.name))


@router.post("/v1/gateways/{name}/rotate-secret", response_model=GatewayWithSecret)
async def rotate_secret(
    name: str,
    session: SessionDep,
    principal: AdminPrincipal,
    response: Response,
    body: SecretRotation | None = None,
) -> GatewayWithSecret:
    """A new secret, shown once; the old one keeps verifying beside it for
    ``LOANWATCH_WEBHOOK_SECRET_OVERLAP_HOURS``, as an endpoint's keeps signing, unless
    ``retire_previous`` stops it at once (it leaked)."""
    response.headers["Cache-Control"] = "no-store"
    retire = body is not None and body.retire_previous
    gateway = await service.rotate_secret(session, principal, name=name, retire_previous=retire)
    return GatewayWithSecret.with_secret(gateway)


@router.post(
    "/v1/inbound/gateways/{name}",
    response_model=NotificationResult,
    openapi_extra=SIGNED_NOTIFICATION,
)
async def receive_notification(
    name: str, request: Request, session: SessionDep
) -> NotificationResult:
    """A gateway's Standard Webhooks-signed notification: ``debit.succeeded``,
    ``debit.failed`` or ``payment.charged_back``. The signature is the authentication; the
    same ``webhook-id`` again answers 200 and changes nothing: it is the idempotency key, and
    an ``Idempotency-Key`` header is ignored here. A gateway that can also send
    `Authorization: Bearer <api key>` must send a valid key of the `gateway` role (401, 403)."""
    if (authorization := request.headers.get("authorization")) is not None:
        (await authenticate(authorization)).require(Role.GATEWAY)
    status, type_, result = await service.receive(
        session, gateway_name=name, body=await request.body(),
        headers={k.lower(): v for k, v in request.headers.items()},
    )  # fmt: skip
    return NotificationResult(status=status, type=type_, result=result)
