from datetime import date, datetime

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utc_now


class Gateway(Base):
    """A payment gateway that reports auto-debit results by signed webhooks."""

    __tablename__ = "gateway"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Kept in clear: verifying an HMAC needs the key itself.
    secret: Mapped[str] = mapped_column(String(100))
    # After a rotation the old secret still verifies until it expires, so the gateway can
    # switch without a notification refused meanwhile.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


# A gateway's webhook-id is at most this long: a longer one is refused before anything is
# written (PostgreSQL would fail the insert of the key below).
WEBHOOK_ID_MAX_LENGTH = 255


class InboundNotification(Base):
    """A processed notification, written in the transaction of its effect: the same
    ``webhook-id`` again changes nothing. ``body_sha256`` (of the canonical JSON, as an
    Idempotency-Key's body is compared; older rows hold the raw bytes') tells a retry (the
    same notification) from an id reused for another notification (refused); None for rows
    older than it."""

    __tablename__ = "inbound_notification"

    gateway: Mapped[str] = mapped_column(ForeignKey("gateway.name"), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(WEBHOOK_ID_MAX_LENGTH), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    result: Mapped[dict[str, object]] = mapped_column(JSON)
    body_sha256: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class FailedDebit(Base):
    """An auto-debit the gateway could not collect: input to the ``failed_debits`` risk rule."""

    __tablename__ = "failed_debit"
    # One failure per attempt: a notification resent under a new webhook-id must not count
    # twice toward the failed_debits rule.
    __table_args__ = (UniqueConstraint("loan_id", "external_ref"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    loan_id: Mapped[str] = mapped_column(ForeignKey("loan.id"), index=True)
    gateway: Mapped[str] = mapped_column(ForeignKey("gateway.name"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    attempted_on: Mapped[date] = mapped_column(Date)
    reason: Mapped[str | None] = mapped_column(String(200))
    external_ref: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
