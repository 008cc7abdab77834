"""Standard Webhooks signing (https://www.standardwebhooks.com): pure functions.

The signature is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), where the key
is the base64-decoded part of the secret after ``whsec_`` — signing with the raw string would
break every stock verifier.
"""

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode()


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Space-separated signatures, one per secret in force (two during a rotation)."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_)
