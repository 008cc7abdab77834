from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.api_keys.models import Role


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    merchant_id: str | None = Field(default=None, max_length=40)
    description: str | None = Field(default=None, max_length=200)


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    role: Role
    merchant_id: str | None
    description: str | None
    created_at: datetime


class ApiKeyCreated(ApiKeyRead):
    key: str | None = Field(
        description="The secret, shown only in this response (null in an idempotent replay)"
    )
