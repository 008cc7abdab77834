"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits) with a
type prefix, so ids sort by creation and cursor pagination can order by id alone."""

import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
