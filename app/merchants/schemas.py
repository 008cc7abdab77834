from datetime import datetime

from pydantic import BaseModel, ConfigDict

from app.api.fields import Name


class MerchantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name


class MerchantRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    created_at: datetime
