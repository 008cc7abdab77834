from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.fields import IsoDate
from app.close.models import CloseRun, CloseStatus


class CloseRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: IsoDate


class CloseRunRead(BaseModel):
    as_of: date
    status: Literal["running", "succeeded", "failed"] = Field(
        description="SPEC's three; a date no worker has started yet is running and queued"
    )
    queued: bool = Field(
        description="not started yet: waiting for a worker, or for an earlier date of a catch-up"
    )
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = Field(
        description="the run's last sign of life (a catch-up's dates still queued keep their "
        "planning's): a close running without one for LOANWATCH_CLOSE__STALE_AFTER_MINUTES "
        "(10) is taken for crashed, and a request to close starts it again"
    )
    attempts: int
    counts: dict[str, int]
    steps: dict[str, Any]
    error: str | None

    @classmethod
    def from_model(cls, run: CloseRun) -> "CloseRunRead":
        queued = run.status == CloseStatus.PENDING
        return cls(
            as_of=run.as_of,
            status="running" if queued else CloseStatus(run.status).value,
            queued=queued, started_at=run.started_at, finished_at=run.finished_at,
            heartbeat_at=run.heartbeat_at, attempts=run.attempts, counts=run.counts or {},
            steps=run.steps or {}, error=run.error,
        )  # fmt: skip


class CloseRequestRead(CloseRunRead):
    """A request's answer: the run of ``as_of``, and every date the request closes."""

    dates: list[date] = Field(
        description="the dates this request closes, oldest first: those missed since the "
        "business date, then as_of; each has its own run (GET /v1/close-runs/{date}) with its "
        "counts, and counts here are as_of's"
    )


class BusinessDateRead(BaseModel):
    business_date: date | None
    # Null for a merchant key: the run's counts are the whole book's, every merchant's.
    last_close_run: CloseRunRead | None = Field(
        description="the latest close run (null before any, and for a merchant key, which "
        "sees the business date alone: a run's counts are the whole book's)"
    )
