"""Money: integer minor units inside, decimal strings at the edges. The only place that parses,
rounds or formats amounts."""

import re
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum

# ISO 4217 minor units of the currencies we lend in; an unknown code is refused, not guessed.
MINOR_DIGITS: dict[str, int] = {
    "CNY": 2, "HKD": 2, "TWD": 2, "SGD": 2, "MYR": 2, "THB": 2, "PHP": 2, "INR": 2,
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "AUD": 2, "CAD": 2, "NZD": 2, "MXN": 2,
    "BRL": 2, "ZAR": 2, "PLN": 2, "SEK": 2, "NOK": 2, "DKK": 2, "CZK": 2, "TRY": 2,
    "JPY": 0, "KRW": 0, "VND": 0, "IDR": 2, "CLP": 0, "ISK": 0,
    "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3,
}  # fmt: skip

# \Z, not $: "$" also matches before a trailing newline, and Decimal("1\n") is 1.
MONEY_PATTERN = re.compile(r"^(0|[1-9][0-9]{0,14})(\.[0-9]{1,3})?\Z")
# A decimal string of any number of decimals: which number the currency wants is told once the
# currency is known, in its own form (a 4-decimal CNY amount told "at most 3, as '1299.000'"
# was then refused for 3: a re-verifier's).
DECIMAL_STRING = re.compile(r"^(0|[1-9][0-9]{0,14})(\.[0-9]+)?\Z")
RATE_PATTERN = re.compile(r"^(0|[1-9][0-9]?)(\.[0-9]{1,6})?\Z")


class Rounding(StrEnum):
    HALF_EVEN = "half_even"
    HALF_UP = "half_up"

    @property
    def decimal_mode(self) -> str:
        return ROUND_HALF_EVEN if self is Rounding.HALF_EVEN else ROUND_HALF_UP


class MoneyError(ValueError):
    """An amount that cannot be money in the given currency."""


def minor_digits(currency: str) -> int:
    try:
        return MINOR_DIGITS[currency]
    except KeyError:
        raise MoneyError(f"unsupported currency {currency!r}") from None


def to_minor(amount: str, currency: str) -> int:
    """Parse a decimal string with exactly the currency's minor digits into minor units."""
    digits = minor_digits(currency)
    example = format_minor(1299 * 10**digits, currency)
    if not DECIMAL_STRING.match(amount):
        raise MoneyError(f"must be a non-negative decimal string such as '{example}'")
    value = Decimal(amount)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent != digits:
        raise MoneyError(
            f"{currency} amounts have exactly {digits} decimal places, such as '{example}'"
        )
    return int(value.scaleb(digits))


def to_decimal(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-minor_digits(currency))


def format_minor(minor: int, currency: str) -> str:
    """Minor units to the decimal string the API returns: always exactly the minor digits.
    In integers, not through Decimal: a loan read formats eight amounts, a schedule five per
    installment (with the read's one greenlet, read and render went from 0.603 to 0.527 ms,
    bench/request_profile.py)."""
    digits = minor_digits(currency)
    if not isinstance(minor, int):  # a Decimal: PostgreSQL sums bigints as numeric
        return f"{to_decimal(minor, currency):.{digits}f}"
    if not digits:
        return str(minor)
    whole, fraction = divmod(abs(minor), 10**digits)
    return f"{'-' if minor < 0 else ''}{whole}.{fraction:0{digits}d}"


def round_minor(value: Decimal, rounding: Rounding) -> int:
    """Round an exact amount already expressed in minor units to a whole minor unit."""
    return int(value.quantize(Decimal(1), rounding=rounding.decimal_mode))


def floor_minor(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_DOWN))


def ceil_to_multiple(value: Decimal, multiple: int) -> int:
    """An exact amount in minor units rounded up to a whole multiple (e.g. whole yuan)."""
    return int((value / multiple).to_integral_value(rounding=ROUND_CEILING)) * multiple


def parse_rate(rate: str) -> Decimal:
    """An annual rate as a decimal string ('0.1299' = 12.99 %), at most six decimals."""
    if not RATE_PATTERN.match(rate):
        raise MoneyError("must be a decimal string such as '0.1299' with at most 6 decimals")
    return Decimal(rate)


def format_rate(rate: Decimal) -> str:
    return f"{rate.normalize():f}" if rate else "0"


def setting_to_minor(amount: Decimal, currency: str) -> int:
    """A configured amount (any precision, e.g. 1.00 for JPY) in the currency's minor units,
    rounded half up."""
    return int(amount.scaleb(minor_digits(currency)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def request_currency(currency: str | None) -> str:
    """A request's currency, the service's default when it names none, or a 422 on
    ``currency`` when Loanwatch does not support it."""
    from app.config import get_settings
    from app.errors import InvalidRequest

    currency = currency or get_settings().default_currency
    if currency not in MINOR_DIGITS:
        raise InvalidRequest.field("currency", f"{currency} is not a supported currency")
    return currency


def parse_amount(
    field: str,
    amount: str,
    currency: str,
    *,
    allow_zero: bool = False,
    ceiling: Decimal | None = None,
) -> int:
    """A request's money field in minor units, or a 422 naming the field. ``ceiling``: the
    largest amount in major units, ``LOANWATCH_MAX_AMOUNT`` unless given."""
    from app.config import get_settings
    from app.errors import InvalidRequest

    try:
        minor = to_minor(amount, currency)
    except MoneyError as exc:
        raise InvalidRequest.field(field, str(exc)) from None
    if minor == 0 and not allow_zero:
        raise InvalidRequest.field(field, "must be greater than zero")
    ceiling = get_settings().max_amount if ceiling is None else ceiling
    if minor > setting_to_minor(ceiling, currency):
        raise InvalidRequest.field(field, f"must not exceed {ceiling}")
    return minor


def payment_ceiling() -> Decimal:
    """The largest payment (or a gateway's failed debit or chargeback): a loan owes more than
    its principal (interest, fees), and a payoff of a principal at ``LOANWATCH_MAX_AMOUNT``
    was over it, so could not be paid at once. Ten times the maximum covers 100 % a year
    over 36 months with every late fee, and keeps sums of such amounts within a BIGINT."""
    from app.config import get_settings

    return get_settings().max_amount * 10
