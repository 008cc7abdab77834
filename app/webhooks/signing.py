"""Standard Webhooks signing (https://www.standardwebhooks.com): pure functions.

The signature is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), where the key
is the base64-decoded part of the secret after ``whsec_`` — signing with the raw string would
break every stock verifier.
"""

import base64
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Protocol

from app.config import get_settings

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class HoldsSecret(Protocol):
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None


def rotate(holder: HoldsSecret, now: datetime, overlap: timedelta | None) -> None:
    """A new secret for a webhook endpoint or a gateway; the old one stays in force beside it
    for ``overlap``, so the other side can switch without a message refused. None: it stops at
    once (it leaked: kept for the overlap, a forged notification signed with it was booked, a
    tester's)."""
    holder.previous_secret = holder.secret if overlap is not None else None
    holder.previous_secret_expires_at = now + overlap if overlap is not None else now
    holder.secret = generate_secret()


def overlap() -> timedelta:
    """How long a rotated secret stays in force beside the new one, in both directions."""
    return timedelta(hours=get_settings().webhook_secret_overlap_hours)


def key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign_with_key(key_: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.digest(key_, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), "sha256")
    return "v1," + base64.b64encode(digest).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    return sign_with_key(key(secret), msg_id, timestamp, body)


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Space-separated signatures, one per secret in force (two during a rotation)."""
    return signature_header_for_keys([key(s) for s in secrets_], msg_id, timestamp, body)


def signature_header_for_keys(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """As ``signature_header``, with the keys decoded once (the dispatcher signs a batch)."""
    return " ".join(sign_with_key(k, msg_id, timestamp, body) for k in keys)
