"""Liveness and readiness for load balancers and orchestrators."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from app.api.routing import StrictRoute
from app.config import get_settings
from app.db import database
from app.ops import metrics
from app.queueing import broker_failure

router = APIRouter(tags=["operations"], route_class=StrictRoute)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint() -> Response:
    return await metrics.render()


@router.get("/readyz")
async def readyz() -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    settings = get_settings()
    if settings.uses_celery:
        failure = await broker_failure()
        checks["broker"] = "ok" if failure is None else f"unavailable: {failure}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)  # fmt: skip
