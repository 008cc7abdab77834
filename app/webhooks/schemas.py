import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, field_validator

from app.api.fields import Instant, Reason
from app.events.types import EVENT_TYPES
from app.webhooks.service import DeliveryView, EndpointView

EventPattern = Annotated[str, Field(min_length=1, max_length=64)]
# No min_length: a short URL of another scheme ("ftp://x") was told it needs 8 characters,
# not that it needs http(s). The service refuses an http(s) URL without a valid host.
# ASCII: with Unicode case folding the long s (U+017F) matched "s".
_HTTP_SCHEME = re.compile(r"https?://", re.IGNORECASE | re.ASCII)


def _http_scheme(url: str) -> str:
    # A scheme is case-insensitive (RFC 3986): "HTTPS://h" is refused by no receiver. The
    # document's pattern spells that out, as JSON Schema's patterns have no flag for it.
    if not _HTTP_SCHEME.match(url):
        raise ValueError("must start with http:// or https://")
    return url


Url = Annotated[
    str,
    Field(max_length=2000, json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}),
    AfterValidator(_http_scheme),
]


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url
    event_types: list[EventPattern] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=50,
        description="Exact types, 'prefix.*' wildcards, or '*'",
    )  # fmt: skip
    description: Reason | None = None
    enabled: Annotated[bool, Strict()] = True


_KEPT_WHEN_LEFT_OUT = ("url", "event_types", "enabled")


def _offer_no_null(schema: dict[str, Any]) -> None:
    # None only stands for "left out" in these (a null is refused below); the document offered
    # it, so a request valid by the document was refused (a tester's, with schemathesis).
    for name in _KEPT_WHEN_LEFT_OUT:
        field = schema["properties"][name]
        (kind,) = [k for k in field.pop("anyOf") if k != {"type": "null"}]
        field.update(kind)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_offer_no_null)

    url: Url | None = None
    event_types: list[EventPattern] | None = Field(default=None, min_length=1, max_length=50)
    description: Reason | None = Field(default=None, description="null clears it")
    enabled: Annotated[bool, Strict()] | None = None

    @field_validator(*_KEPT_WHEN_LEFT_OUT, mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Left out keeps the field; a null would read as "clear it", which none of these can.
        if value is None:
            raise ValueError("must not be null; leave it out to keep it")
        return value


class EndpointRead(BaseModel):
    id: str
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_view(cls, view: EndpointView) -> "EndpointRead":
        e = view.endpoint
        return cls(
            id=e.id, url=e.url, event_types=view.event_types, description=e.description,
            enabled=e.enabled, disabled_reason=e.disabled_reason, failing_since=e.failing_since,
            previous_secret_expires_at=e.previous_secret_expires_at, created_at=e.created_at,
            updated_at=e.updated_at,
        )  # fmt: skip


class EndpointWithSecret(EndpointRead):
    secret: str | None = Field(
        description="whsec_…, shown only in this response (null in an idempotent replay)"
    )

    @classmethod
    def with_secret(cls, view: EndpointView) -> "EndpointWithSecret":
        return cls(**EndpointRead.from_view(view).model_dump(), secret=view.endpoint.secret)


class AttemptRead(BaseModel):
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    response_excerpt: str | None
    error: str | None


class DeliveryRead(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[AttemptRead]

    @classmethod
    def from_view(cls, view: DeliveryView) -> "DeliveryRead":
        d = view.delivery
        return cls(
            id=str(d.id), event_id=view.event.id, event_type=view.event.type, status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            delivered_at=d.delivered_at, created_at=d.created_at,
            attempt_log=[
                AttemptRead(attempted_at=a.attempted_at, status_code=a.status_code,
                            latency_ms=a.latency_ms, response_excerpt=a.response_excerpt,
                            error=a.error)
                for a in view.attempts
            ],
        )  # fmt: skip


class RecoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Instant


class RedeliverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_id: str | None = Field(default=None, min_length=1, max_length=40, pattern=r"^\S+$")


class Queued(BaseModel):
    deliveries: int


class WebhookPayload(BaseModel):
    """The body of a delivery (``app.webhooks.dispatcher.payload``)."""

    type: str = Field(json_schema_extra={"enum": list(EVENT_TYPES)})
    timestamp: datetime = Field(description="When the event was written, UTC")
    data: dict[str, Any] = Field(
        description="The event's fields (docs/webhooks.md) and `sequence`, which increases per "
        "loan: keep a loan's state from the event with the highest sequence, but handle every "
        "event once by its webhook-id, whatever its sequence (a retry can arrive late)"
    )
