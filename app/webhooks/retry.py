"""When to try a failed delivery again: pure, no I/O."""

import random
from datetime import timedelta

# After the first attempt fails: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 10 h, 24 h, 24 h
# — about four days, inside the five-day window after which an endpoint is disabled.
BACKOFF = tuple(
    timedelta(seconds=s) for s in (5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 86400, 86400)
)
MAX_ATTEMPTS = len(BACKOFF) + 1
# The longest a receiver's Retry-After holds a delivery back.
LONGEST_WAIT = timedelta(days=1)
LONGEST_WAIT_SECONDS = int(LONGEST_WAIT.total_seconds())


def next_delay(
    attempts: int, retry_after: timedelta | None = None, rng: random.Random | None = None
) -> timedelta | None:
    """The wait before attempt ``attempts + 1``, or None when the schedule is spent. Jitter of
    up to 10 % spreads retries that failed together; a receiver's Retry-After is honoured when
    longer."""
    if attempts >= MAX_ATTEMPTS:
        return None
    base = BACKOFF[attempts - 1]
    jitter = base * ((rng or random).random() * 0.1)
    delay = base + jitter
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, LONGEST_WAIT)
    return delay
