from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.api.fields import FREE_TEXT, FREE_TEXT_RULE
from app.api_keys.models import Role

# The column's length (api_key.description).
DESCRIPTION_MAX_LENGTH = 200


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    merchant_id: str | None = Field(default=None, max_length=40)
    description: (
        Annotated[
            str,
            Field(min_length=1, max_length=DESCRIPTION_MAX_LENGTH, description=FREE_TEXT_RULE),
            FREE_TEXT,
        ]
        | None
    ) = None


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    role: Role
    merchant_id: str | None
    description: str | None
    created_at: datetime


class ApiKeyListed(ApiKeyRead):
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str | None = Field(
        description="The secret, shown only in this response (null in an idempotent replay)"
    )
