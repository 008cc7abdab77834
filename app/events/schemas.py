from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.events.types import EVENT_TYPES


class EventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    type: str = Field(json_schema_extra={"enum": list(EVENT_TYPES)})
    timestamp: datetime
    data: dict[str, Any]

    @classmethod
    def from_model(cls, event: Any) -> "EventRead":
        # The position is the per-loan sequence receivers order a loan's events by.
        return cls(
            id=event.id,
            type=event.type,
            timestamp=event.created_at,
            data={**event.data, "sequence": event.position},
        )
