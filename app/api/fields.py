"""Field types shared by request schemas. The shape is checked here; the currency's minor
digits are checked by the service, which knows the currency."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from app.money import MONEY_PATTERN, RATE_PATTERN


def _money_shape(value: str) -> str:
    if not MONEY_PATTERN.match(value):
        raise ValueError(
            "must be a non-negative decimal string such as '1299.00' (JSON numbers are refused)"
        )
    return value


def _rate_shape(value: str) -> str:
    if not RATE_PATTERN.match(value):
        raise ValueError("must be a decimal string such as '0.1299' with at most 6 decimals")
    return value


MoneyStr = Annotated[str, Field(max_length=20, examples=["1299.00"]), AfterValidator(_money_shape)]
RateStr = Annotated[str, Field(max_length=12, examples=["0.1299"]), AfterValidator(_rate_shape)]
Reference = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e][\x20-\x7e]*$")
]


def _in_utc(value: datetime) -> datetime:
    """A naive time is UTC. Near year 1 or 9999 an offset can push UTC off the calendar."""
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError("is out of the range of dates once converted to UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(_in_utc)]
