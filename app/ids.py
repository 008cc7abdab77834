"""Opaque, time-ordered identifiers (ULID layout: 48-bit milliseconds + 80 random bits; ids
made together count up from one random start) with a type prefix, so ids sort by creation and
cursor pagination can order by id alone."""

import base64
import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Two digits (10 bits) per lookup: 13 steps instead of 26 (a close writing a million flags
# and events makes a million ids).
_DIGIT_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_SHIFTS = tuple(range(120, -1, -10))
# RFC 4648's base32 digits are Crockford's in the same order of value.
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)


def encode(value: int) -> str:
    """A 128-bit value (the top two bits zero) as 26 Crockford base32 digits, most
    significant first, so that the strings sort as the numbers do."""
    return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def _this_millisecond() -> int:
    """The current instant in the top 48 bits of a ULID value."""
    return (time.time_ns() // 1_000_000) << 80


def new_id(prefix: str) -> str:
    return f"{prefix}_{encode(_this_millisecond() | secrets.randbits(80))}"


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids of one instant, ascending, encoded together (a first close raises half a
    million flags and events, and an id at a time was a fifth of the risk step's Python). The
    random parts run on from one random start, as ULID's monotonic ids within a millisecond
    do, so that rows written in a given order sort by id in that order too: in a random order,
    a loan's flags raised together were told cleared in a random order (a re-verifier's).
    Sorting random parts instead cost half as much again (790 against 525 ms for 500,000)."""
    instant = f"{prefix}_{encode(_this_millisecond())[:10]}"
    start = secrets.randbits(79)  # room for any count to run on without carrying
    # 80 bits are the last 16 digits, whole: base32 of 10 bytes, no padding.
    raw = b"".join((start + n).to_bytes(10, "big") for n in range(count))
    digits = base64.b32encode(raw).decode().translate(_FROM_RFC4648)
    return [instant + digits[n : n + 16] for n in range(0, 16 * count, 16)]
