"""Liveness and readiness for load balancers and orchestrators."""

import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.api.deps import MetricsReaderDep
from app.api.routing import StrictRoute
from app.config import get_settings
from app.db import database
from app.ops import metrics
from app.queueing import broker_failure

router = APIRouter(tags=["operations"], route_class=StrictRoute)
log = logging.getLogger("loanwatch.ops")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(reader: MetricsReaderDep) -> Response:
    """For a dashboard or admin key: the gauges are the whole book's (loans and principal by
    bucket, open flags), which SPEC's roles show no merchant; open, the API's port told them
    to anyone who could reach it (a tester's)."""
    return await metrics.render(read_the_book=reader.database_answered)


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description="`database` always; `broker` when the scheduled work runs on Celery (not "
        "on the embedded default): `ok`, or `unavailable: <reason>`"
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a check failed"}},
)
async def readyz() -> JSONResponse:
    """Ready when the database answers, and the broker too when Celery runs the scheduled
    work: 503 with the failing check otherwise."""
    checks: dict[str, str] = {}
    try:
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        # The answer names the class alone (it is open to anyone); the log, the reason.
        log.warning("not ready: the database does not answer: %s: %s", type(exc).__name__, exc)
        checks["database"] = f"unavailable: {type(exc).__name__}"
    settings = get_settings()
    if settings.uses_celery:
        failure = await broker_failure()
        checks["broker"] = "ok" if failure is None else f"unavailable: {failure}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)  # fmt: skip
