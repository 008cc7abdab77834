"""create_app(): routers, middleware and the one error handler."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from app.api import openapi, stopping
from app.api.bodies import LimitBodySize, RequireJson
from app.api.framing import not_framed
from app.api.head import AnswerHeadAsGet
from app.api.idempotency import IdempotencyMiddleware
from app.api.stamps import StampResponses
from app.api.stopping import AnswerCancelledAs503
from app.api.unambiguous import RefuseAmbiguousInput
from app.api_keys.routes import router as api_keys_router
from app.borrowers.routes import router as borrowers_router
from app.close import service as close_service
from app.close.routes import router as close_router
from app.config import get_settings
from app.db import database
from app.errors import install_error_handlers
from app.events.routes import router as events_router
from app.gateways.routes import router as gateways_router
from app.loans.read_lane import LoanReadLane
from app.loans.routes import router as loans_router
from app.merchants.routes import router as merchants_router
from app.ops import access_log, metrics
from app.ops.routes import router as ops_router
from app.payments.routes import router as payments_router
from app.portfolio import positions  # noqa: F401 - before-flush listener keeping the counts
from app.portfolio.routes import router as portfolio_router
from app.products.routes import router as products_router
from app.promises.routes import router as promises_router
from app.relief.routes import router as relief_router
from app.risk.routes import router as risk_router
from app.scheduler import InProcessScheduler
from app.webhooks.routes import describe_deliveries
from app.webhooks.routes import router as webhooks_router
from app.webhooks.wakeup import wakeup  # noqa: F401 - after-commit listeners

DESCRIPTION = """Loan servicing with early-warning alerts for point-of-sale installment loans.

Authenticate with `Authorization: Bearer <api key>`. Every POST honours `Idempotency-Key`.
Money is a decimal string in the currency's minor digits; errors are `application/problem+json`.
"""


# In the order of their traffic: a request is matched against the routes one by one, about
# 1.5 us each (bench/framework_floor.py), so the POS's and the gateways' calls come first. No
# two routes match the same path and method (tests/api/test_routing.py), so the order decides
# nothing else.
ROUTERS = (
    loans_router,
    payments_router,
    gateways_router,
    borrowers_router,
    promises_router,
    relief_router,
    risk_router,
    portfolio_router,
    events_router,
    webhooks_router,
    products_router,
    merchants_router,
    api_keys_router,
    close_router,
    ops_router,
)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    scheduler = None if get_settings().uses_celery else InProcessScheduler()
    if scheduler:
        scheduler.start()
    try:
        yield
    finally:
        await stopping.clean_ups_done(seconds=10)
        if scheduler:
            await scheduler.stop()
        # A close a request started (the embedded default): recorded failed, not left
        # running to refuse every close 409 until it goes stale.
        await close_service.stop_closes_in_process(wait_seconds=10)
        await database.dispose()


def create_app() -> FastAPI:
    app = FastAPIOffline(
        title="Loanwatch",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/docs/assets",
        # A path with a trailing slash is not found, not redirected: a 307 to the other form
        # (absolute, http even behind TLS) was answered before authentication.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(RefuseAmbiguousInput)  # outside the idempotency claim: it writes
    app.add_middleware(LimitBodySize)  # before anything reads a whole body
    app.add_middleware(RequireJson)
    app.add_middleware(metrics.RequestMetrics)
    app.add_middleware(AnswerHeadAsGet)
    app.add_middleware(AnswerCancelledAs503)  # outermost: whatever was cancelled inside
    for router in ROUTERS:
        # The routes themselves, not app.include_router(router): FastAPI matches an included
        # router's routes through a wrapper per router and per route, which cost a request
        # routed to the last router about 115 us of CPU against 1-2 us for a plain route
        # (bench/framework_floor.py). The OpenAPI document is the same either way (tested).
        app.router.routes.extend(router.routes)
    describe_deliveries(app)
    openapi.install(app)
    not_framed(app)
    return app


def as_served(app: FastAPI) -> ASGIApp:
    """The app behind GET /v1/loans/{id}'s lane, outside even FastAPI's own layers around the
    middlewares (its telemetry and error handling), which the lane needs none of
    (bench/request_profile.py times the read both ways); every answer stamped."""
    return StampResponses(LoanReadLane(app))


app = create_app()
access_log.install()
served = as_served(app)  # what `loanwatch serve` runs
