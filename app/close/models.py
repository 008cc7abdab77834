from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Date, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class CloseStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CloseRun(Base):
    """One business date's close. The business date is the latest date whose close has
    succeeded (``succeeded_at``), whatever a rerun of it is doing now."""

    __tablename__ = "close_run"

    as_of: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(10), index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(default=0)
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    steps: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # When the close last succeeded: kept while a rerun runs or after it fails, which closed
    # nothing the date's close had not (a failed rerun set the business date back a day, and
    # the day before could then be closed again over the later book: a tester's).
    succeeded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The process running the attempt in process (``app.ops.processes``); None on Celery.
    owner: Mapped[str | None] = mapped_column(String(200))


class FeeReplayDue(Base):
    """An open loan an upgrade left for the next close's fee step to replay once:
    - charged late fees on several installments by a release before the forty-first session,
      which pyramided them (docs/decisions.md, "No pyramiding."): the replay withdraws such a
      fee as charged too soon. Until then its payoff and arrears quotes counted those fees,
      and a payment of the quote was refused as more than the payoff its replay found (a
      tester's) (migration 0043);
    - with an installment paid in part, or paid late over several payments, which may have
      come within the arrears tolerance before (or without) being paid in full: the replay
      dates its ``settled_on`` (0044)."""

    __tablename__ = "fee_replay_due"

    loan_id: Mapped[str] = mapped_column(String(40), primary_key=True)
