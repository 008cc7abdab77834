from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.api.fields import Currency, Instant, IsoDate, MoneyStr, PassedOnText, Reference
from app.gateways.models import Gateway

GatewayName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class GatewayCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: GatewayName


class GatewayRead(BaseModel):
    name: str
    created_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="after a rotation, until when the previous secret still verifies"
    )

    @classmethod
    def from_model(cls, gateway: Gateway) -> "GatewayRead":
        return cls(
            name=gateway.name, created_at=gateway.created_at,
            previous_secret_expires_at=gateway.previous_secret_expires_at,
        )  # fmt: skip


class GatewayWithSecret(GatewayRead):
    secret: str | None = Field(
        description="whsec_…, shown only in this response (null in an idempotent replay)"
    )

    @classmethod
    def with_secret(cls, gateway: Gateway) -> "GatewayWithSecret":
        return cls(**GatewayRead.from_model(gateway).model_dump(), secret=gateway.secret)


class NotificationType(StrEnum):
    DEBIT_SUCCEEDED = "debit.succeeded"
    DEBIT_FAILED = "debit.failed"
    PAYMENT_CHARGED_BACK = "payment.charged_back"


class NotificationData(BaseModel):
    # Gateways add fields of their own: those are ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    loan_id: str = Field(min_length=1, max_length=40)
    # Required for every type, as SPEC.md's payload has them: without them a failed debit was
    # stored as 0.00 (and counted toward failed_debits), and a notification delivered late was
    # dated the day it arrived.
    amount: MoneyStr
    received_on: IsoDate
    external_ref: Reference
    # Optional, as SPEC.md's payload has none; when a gateway sends it, it must be the loan's:
    # ignored with the other extra fields, 100.00 USD was recorded as 100.00 CNY (a tester's).
    currency: Currency | None = Field(default=None, description="ISO 4217; when given, the loan's")
    reason: PassedOnText | None = None


class Notification(BaseModel):
    """``{type, timestamp, data}`` as the gateway signs it."""

    model_config = ConfigDict(extra="ignore")

    type: NotificationType
    # An RFC 3339 string, as every instant (docs/decisions.md, "Dates"): a number or "20261203"
    # would be read as seconds since 1970.
    timestamp: Instant
    data: NotificationData


class NotificationResult(BaseModel):
    status: str = Field(
        description="processed; ignored (a debit.failed on a loan that owes nothing: paid off "
        "or cancelled; a payment.charged_back of a payment reversed already); or duplicate "
        "for a webhook-id seen before"
    )
    type: str
    result: dict[str, object]
