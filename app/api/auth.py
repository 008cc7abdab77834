"""API keys: hashing and the authenticated caller."""

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.api_keys.models import Role
from app.errors import Forbidden

KEY_PREFIX = "lw_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key_hash(authorization: str | None) -> str | None:
    """The hash of the key an ``Authorization: Bearer <api key>`` header carries; None for any
    other header, or none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return hash_key(token.strip())


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


class PrincipalCache:
    """Key hash -> principal for a few seconds, so a busy client does not cost a session, a
    pool checkout and a SELECT on every request (bench/http_load.py). Only valid keys are
    kept. A key revoked through this process is refused by it at once, for good; another API
    process keeps accepting it for at most ``ttl_seconds`` (docs/decisions.md)."""

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        # Never put back: a look-up that read the key before the revocation committed would
        # otherwise keep it accepted for ttl_seconds after the 204 (a tester's, on PostgreSQL).
        self._revoked: set[str] = set()

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def last_known(self, key_hash: str) -> Principal | None:
        """The key's principal however long ago it was looked up (expired entries are kept
        until replaced): for what may be answered while the database cannot be asked."""
        entry = self._entries.get(key_hash)
        return entry[1] if entry is not None and key_hash not in self._revoked else None

    def put(self, key_hash: str, principal: Principal) -> None:
        if key_hash in self._revoked:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (self._clock() + self.ttl_seconds, principal)

    def revoke(self, key_hash: str) -> None:
        """Refuse the key from now on, whatever a look-up running meanwhile read."""
        self._revoked.add(key_hash)
        self._entries.pop(key_hash, None)

    def revoked(self, key_hash: str) -> bool:
        return key_hash in self._revoked


# Revocation reaches every API process within this many seconds (docs/decisions.md).
principals = PrincipalCache(ttl_seconds=5.0)
