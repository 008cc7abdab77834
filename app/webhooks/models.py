from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoint"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Kept in clear: every delivery is signed with it (HMAC needs the key itself).
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    # Start of the current run of failed attempts; cleared by any success.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class WebhookSubscriptionPeriod(Base):
    """One event-type pattern of an endpoint (an exact type, ``prefix.*`` or ``*``), from when
    the endpoint took it up until it dropped it: the open periods are its subscriptions now,
    and ``recover`` sends the events the endpoint was subscribed to when they were written,
    not those its patterns of today match (a tester's recovery sent payments written before
    the type was subscribed)."""

    __tablename__ = "webhook_subscription_period"

    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoint.id", ondelete="CASCADE"), primary_key=True
    )
    pattern: Mapped[str] = mapped_column(String(64), primary_key=True)
    subscribed_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WebhookDelivery(Base):
    """An event owed to an endpoint: written in the event's own transaction (the outbox), then
    claimed by a dispatcher when ``next_attempt_at`` is due."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("event_position", "endpoint_id"),
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
        # Never reused on SQLite either, as a sequence's are not: a deleted endpoint's last
        # delivery id went to the next delivery, which a drain still holding the first took
        # for it and left unsent until its lease ran out (a tester's); clients saw one id
        # name two deliveries.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True
    )
    event_position: Mapped[int] = mapped_column(ForeignKey("event.position"))
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoint.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # While a dispatcher holds it (from its claim to the record of its attempt): what makes
    # deliveries due at once (an endpoint enabled again, a recovery) leaves it to its attempt.
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempt"
    __table_args__ = ({"sqlite_autoincrement": True},)  # as a delivery's

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True
    )
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_delivery.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(String(500))
