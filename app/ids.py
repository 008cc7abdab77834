"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits) with a
type prefix, so ids sort by creation and cursor pagination can order by id alone."""

import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Two digits (10 bits) per lookup: 13 steps instead of 26 (a close writing a million flags
# and events makes a million ids).
_DIGIT_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_SHIFTS = tuple(range(120, -1, -10))


def encode(value: int) -> str:
    """A 128-bit value (the top two bits zero) as 26 Crockford base32 digits, most
    significant first, so that the strings sort as the numbers do."""
    return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_id(prefix: str) -> str:
    return f"{prefix}_{encode((time.time_ns() // 1_000_000) << 80 | secrets.randbits(80))}"
