"""API keys: hashing and the authenticated caller."""

import hashlib
import secrets
from dataclasses import dataclass

from app.api_keys.models import Role
from app.errors import Forbidden

KEY_PREFIX = "lw_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its role and, for merchant keys, the merchant."""

    api_key_id: str
    role: Role
    merchant_id: str | None = None

    @property
    def is_merchant(self) -> bool:
        return self.role is Role.MERCHANT

    def require(self, *roles: Role) -> None:
        if self.role is not Role.ADMIN and self.role not in roles:
            raise Forbidden(f"the {self.role} role may not do this")

    def can_see_merchant(self, merchant_id: str) -> bool:
        return not self.is_merchant or self.merchant_id == merchant_id
