from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Identity, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class Event(Base):
    """The outbox: written in the same transaction as the change it reports.

    ``position`` is the ``sequence`` receivers see: every write to a loan holds the loan's row
    lock, so a loan's events get increasing positions in commit order. Across loans positions
    are drawn at insert, not at commit, so the feed is ordered by ``transaction_id`` first
    (see ``app.events.service.list_events``).
    """

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_feed_order", "transaction_id", "position"),)

    # SQLite only auto-increments an INTEGER primary key.
    position: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    loan_id: Mapped[str | None] = mapped_column(String(40), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    # The writing transaction's id on PostgreSQL (migration 0028's default); 0 on SQLite, whose
    # writers take turns, so that positions there are already in commit order.
    transaction_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The oldest transaction still running when it was written (migration 0032's default on
    # PostgreSQL; null on SQLite and before): any event that commits after this one without
    # a later transaction id is of a transaction from there on (``list_events``' ``after``).
    oldest_running_transaction_id: Mapped[int | None] = mapped_column(BigInteger)
