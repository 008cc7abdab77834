"""app/money.py: parsing and formatting minor units, rounding, and the request-field parser."""

import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.config import get_settings
from app.errors import InvalidRequest
from app.money import (
    MINOR_DIGITS,
    MoneyError,
    Rounding,
    ceil_to_multiple,
    floor_minor,
    format_minor,
    format_rate,
    minor_digits,
    parse_amount,
    parse_rate,
    round_minor,
    setting_to_minor,
    to_decimal,
    to_minor,
)

NOT_MONEY = "must be a non-negative decimal string such as '1299.00'"


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Pure calculation: nothing in the database to truncate (overrides the conftest fixture)."""


def exact_round(value: Fraction, rounding: Rounding) -> int:
    """Round a rational to an integer by hand, as a reference independent of ``decimal``."""
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest > Fraction(1, 2):
        return floor + 1
    if rest < Fraction(1, 2):
        return floor
    if rounding is Rounding.HALF_UP:
        return floor + 1 if value > 0 else floor
    return floor + (floor % 2)


currencies = st.sampled_from(sorted(MINOR_DIGITS))

# --- minor digits -------------------------------------------------------------------------


def test_minor_digits_follow_iso_4217() -> None:
    assert minor_digits("CNY") == 2
    assert minor_digits("USD") == 2
    assert minor_digits("JPY") == 0
    assert minor_digits("KRW") == 0
    assert minor_digits("KWD") == 3
    assert minor_digits("BHD") == 3


@pytest.mark.parametrize("code", ["XXX", "cny", "", "CNYY", "BTC"])
def test_unknown_currency_is_refused_not_guessed(code: str) -> None:
    with pytest.raises(MoneyError, match="unsupported currency"):
        minor_digits(code)
    with pytest.raises(MoneyError, match="unsupported currency"):
        to_minor("1", code)
    with pytest.raises(MoneyError, match="unsupported currency"):
        format_minor(1, code)


# --- to_minor -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("1299.00", "CNY", 129900),
        ("1299.50", "CNY", 129950),
        ("0.01", "CNY", 1),
        ("0.00", "CNY", 0),
        ("999999999999999.99", "CNY", 99999999999999999),
        ("1299", "JPY", 1299),
        ("0", "JPY", 0),
        ("1.234", "KWD", 1234),
        ("1.200", "KWD", 1200),
        ("0.001", "BHD", 1),
    ],
)
def test_to_minor_parses_decimal_strings(amount: str, currency: str, minor: int) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(
    "amount",
    [
        "",
        "-1",
        "-0.01",
        "+1",
        "1e3",
        "1E3",
        "NaN",
        "Infinity",
        "01",
        "00",
        "00.50",
        "1.",
        ".5",
        " 1",
        "1 ",
        "1\n",  # a trailing newline once slipped through the pattern's '$'
        "\n1",
        "1,000",
        "1_000",
        "1000000000000000",  # sixteen integer digits
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, money says no
        "0x10",
    ],
)
def test_to_minor_refuses_anything_but_a_plain_decimal(amount: str) -> None:
    refused = re.escape("non-negative decimal string such as '1299.000'")
    with pytest.raises(MoneyError, match=refused):
        to_minor(amount, "KWD")


def test_more_decimals_than_any_currency_are_told_the_currencys_form() -> None:
    """Told "at most 3, as '1299.000'", a CNY payment of 1.0000 was then refused for 3."""
    with pytest.raises(MoneyError, match="CNY amounts have exactly 2 decimal places"):
        to_minor("1.0000", "CNY")


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("1.001", "CNY", "CNY amounts have exactly 2 decimal places, such as '1299.00'"),
        ("0.000", "CNY", "CNY amounts have exactly 2 decimal places, such as '1299.00'"),
        ("1299", "CNY", "CNY amounts have exactly 2 decimal places, such as '1299.00'"),
        ("1299.5", "CNY", "CNY amounts have exactly 2 decimal places, such as '1299.00'"),
        ("0", "CNY", "CNY amounts have exactly 2 decimal places, such as '1299.00'"),
        ("1.0", "JPY", "JPY amounts have exactly 0 decimal places, such as '1299'"),
        ("1.00", "KRW", "KRW amounts have exactly 0 decimal places, such as '1299'"),
        ("1.2", "KWD", "KWD amounts have exactly 3 decimal places, such as '1299.000'"),
    ],
)
def test_to_minor_refuses_other_than_the_currencys_minor_digits(
    amount: str, currency: str, message: str
) -> None:
    with pytest.raises(MoneyError) as caught:
        to_minor(amount, currency)
    assert str(caught.value) == message


@given(currencies, st.integers(0, 10**15 - 1))
def test_format_then_parse_round_trips(currency: str, minor: int) -> None:
    text = format_minor(minor, currency)
    assert to_minor(text, currency) == minor


@given(currencies, st.integers(0, 10**15 - 1), st.integers(0, 3))
def test_parse_reads_the_digits_as_written(currency: str, major: int, decimals: int) -> None:
    digits = minor_digits(currency)
    fraction = str(major % 10**decimals).zfill(decimals) if decimals else ""
    text = f"{major}.{fraction}" if decimals else str(major)
    if decimals != digits:  # SPEC.md: exactly the currency's minor digits
        with pytest.raises(MoneyError, match="decimal places"):
            to_minor(text, currency)
    else:
        assert to_minor(text, currency) == major * 10**digits + int(fraction or 0)


# --- format_minor / to_decimal ------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (129900, "CNY", "1299.00"),
        (0, "CNY", "0.00"),
        (5, "CNY", "0.05"),
        (10, "CNY", "0.10"),
        (99999999999999999, "CNY", "999999999999999.99"),
        (10**20, "CNY", "1000000000000000000.00"),  # never scientific notation
        (1299, "JPY", "1299"),
        (0, "JPY", "0"),
        (1234, "KWD", "1.234"),
        (1, "KWD", "0.001"),
        (-5, "CNY", "-0.05"),  # a negative balance (a credit) still formats
    ],
)
def test_format_minor_always_has_exactly_the_minor_digits(
    minor: int, currency: str, text: str
) -> None:
    assert format_minor(minor, currency) == text


@given(currencies, st.integers(-(10**20), 10**20))
def test_format_minor_writes_the_exact_decimal(currency: str, minor: int) -> None:
    digits = minor_digits(currency)
    text = f"{to_decimal(minor, currency):.{digits}f}"
    assert format_minor(minor, currency) == text
    # A sum PostgreSQL returns as numeric formats the same.
    assert format_minor(Decimal(minor), currency) == text  # type: ignore[arg-type]


def test_to_decimal_is_exact() -> None:
    assert to_decimal(129900, "CNY") == Decimal("1299.00")
    assert to_decimal(1, "KWD") == Decimal("0.001")
    assert to_decimal(7, "JPY") == Decimal(7)
    assert to_decimal(10**17 + 1, "CNY") == Decimal("1000000000000000.01")


# --- rounding -----------------------------------------------------------------------------


def test_rounding_modes_map_to_decimal_modes() -> None:
    assert Rounding.HALF_EVEN.decimal_mode == ROUND_HALF_EVEN
    assert Rounding.HALF_UP.decimal_mode == ROUND_HALF_UP
    assert Rounding("half_even") is Rounding.HALF_EVEN
    assert Rounding("half_up") is Rounding.HALF_UP


@pytest.mark.parametrize(
    ("value", "half_even", "half_up"),
    [
        ("2.5", 2, 3),  # the tie: the two modes differ
        ("3.5", 4, 4),  # ... but not when the even neighbour is above
        ("0.5", 0, 1),
        ("1.5", 2, 2),
        ("2.4999999", 2, 2),
        ("2.5000001", 3, 3),
        ("2.6", 3, 3),
        ("0", 0, 0),
        ("-2.5", -2, -3),  # half up rounds away from zero
        ("6495.0", 6495, 6495),
        ("12345678901234567.5", 12345678901234568, 12345678901234568),
    ],
)
def test_round_minor(value: str, half_even: int, half_up: int) -> None:
    assert round_minor(Decimal(value), Rounding.HALF_EVEN) == half_even
    assert round_minor(Decimal(value), Rounding.HALF_UP) == half_up


@given(
    st.integers(-(10**12), 10**12),
    st.integers(1, 10**6),
    st.sampled_from(list(Rounding)),
)
def test_round_minor_agrees_with_exact_rational_rounding(
    numerator: int, denominator: int, rounding: Rounding
) -> None:
    value = Decimal(numerator) / Decimal(denominator)
    # Decimal division is exact here unless the quotient needs more than 28 digits, and then
    # it is never within a rounding error of a tie.
    assert round_minor(value, rounding) == exact_round(Fraction(numerator, denominator), rounding)


@pytest.mark.parametrize(
    ("value", "floored"), [("2.999", 2), ("2", 2), ("0.5", 0), ("0", 0), ("535.88", 535)]
)
def test_floor_minor(value: str, floored: int) -> None:
    assert floor_minor(Decimal(value)) == floored


@pytest.mark.parametrize(
    ("value", "multiple", "ceiled"),
    [
        ("12300", 100, 12300),
        ("12300.0001", 100, 12400),
        ("12399.9999", 100, 12400),
        ("53587.5505", 100, 53600),
        ("53587.5505", 1000, 54000),
        ("49", 100, 100),
        ("0", 500, 0),
        ("8.5", 1, 9),
    ],
)
def test_ceil_to_multiple(value: str, multiple: int, ceiled: int) -> None:
    assert ceil_to_multiple(Decimal(value), multiple) == ceiled


@given(st.integers(0, 10**12), st.integers(0, 9999), st.integers(1, 10**6))
def test_ceil_to_multiple_is_the_smallest_multiple_not_below(
    minor: int, fraction: int, multiple: int
) -> None:
    value = Decimal(minor) + Decimal(fraction).scaleb(-4)
    ceiled = ceil_to_multiple(value, multiple)
    assert ceiled % multiple == 0
    assert value <= ceiled < value + multiple


# --- rates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("0.1299", Decimal("0.1299")),
        ("0", Decimal(0)),
        ("1", Decimal(1)),
        ("0.000001", Decimal("0.000001")),
        ("99.999999", Decimal("99.999999")),
        ("0.10", Decimal("0.1")),
    ],
)
def test_parse_rate(text: str, rate: Decimal) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0.1234567",
        "100",
        "-0.1",
        "1e-2",
        ".5",
        "00.1",
        "0.",
        "0.1\n",
        " 0.1",
        "12.99%",
        "NaN",
    ],
)
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(MoneyError, match="at most 6 decimals"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (Decimal("0.1299"), "0.1299"),
        (Decimal("0.1000"), "0.1"),
        (Decimal("0.120000"), "0.12"),
        (Decimal(0), "0"),
        (Decimal("0.000000"), "0"),
        (Decimal("10.00"), "10"),
        (Decimal("0.000001"), "0.000001"),
    ],
)
def test_format_rate(rate: Decimal, text: str) -> None:
    assert format_rate(rate) == text


@given(st.integers(0, 99_999_999))
def test_rate_round_trips(millionths: int) -> None:
    rate = Decimal(millionths).scaleb(-6)
    text = format_rate(rate)
    assert "E" not in text
    assert parse_rate(text) == rate
    assert format_rate(parse_rate(text)) == text


# --- configured amounts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("1.00", "CNY", 100),
        ("1.00", "JPY", 1),
        ("0.5", "JPY", 1),  # half up
        ("1.5", "JPY", 2),
        ("2.5", "JPY", 3),  # half up, not half even
        ("0.005", "CNY", 1),
        ("0.0049", "CNY", 0),
        ("100000000", "CNY", 10_000_000_000),
        ("100000000", "JPY", 100_000_000),
        ("3000.00", "KWD", 3_000_000),
    ],
)
def test_setting_to_minor_rounds_half_up(amount: str, currency: str, minor: int) -> None:
    assert setting_to_minor(Decimal(amount), currency) == minor


# --- parse_amount: a request field --------------------------------------------------------


def _refusal(field: str, amount: str, currency: str, **kwargs: bool) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_amount(field, amount, currency, **kwargs)
    return caught.value


def test_parse_amount_returns_minor_units() -> None:
    assert parse_amount("principal", "6000.00", "CNY") == 600000
    assert parse_amount("principal", "6000", "JPY") == 6000
    assert parse_amount("amount", "0.001", "KWD") == 1
    assert parse_amount("amount", "0.00", "CNY", allow_zero=True) == 0


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("12.5.0", "CNY", NOT_MONEY),
        ("-1.00", "CNY", NOT_MONEY),
        ("1.00\n", "CNY", NOT_MONEY),
        ("1.001", "CNY", "CNY amounts have exactly 2 decimal places, such as '1299.00'"),
        ("1.5", "JPY", "JPY amounts have exactly 0 decimal places, such as '1299'"),
        ("1.00", "XXX", "unsupported currency 'XXX'"),
        ("0", "JPY", "must be greater than zero"),
        ("0.00", "CNY", "must be greater than zero"),
        ("100000000.01", "CNY", "must not exceed 100000000"),
        ("100000001", "JPY", "must not exceed 100000000"),
    ],
)
def test_parse_amount_refusals_name_the_field(amount: str, currency: str, message: str) -> None:
    assert get_settings().max_amount == Decimal(100000000)
    refusal = _refusal("payment.amount", amount, currency)
    assert refusal.status == 422
    assert refusal.code == "validation_error"
    assert refusal.errors == [{"field": "payment.amount", "message": message}]
    assert refusal.detail == f"payment.amount: {message}"


def test_parse_amount_accepts_exactly_the_maximum() -> None:
    assert parse_amount("principal", "100000000.00", "CNY") == 10_000_000_000
    assert parse_amount("principal", "100000000", "JPY") == 100_000_000
    assert parse_amount("principal", "100000000.000", "KWD") == 100_000_000_000


def test_parse_amount_follows_the_configured_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "max_amount", Decimal("50.005"))
    assert parse_amount("amount", "50.01", "CNY") == 5001  # the setting rounds half up
    assert _refusal("amount", "50.02", "CNY").errors == [
        {"field": "amount", "message": "must not exceed 50.005"}
    ]
    assert parse_amount("amount", "50", "JPY") == 50
    assert _refusal("amount", "51", "JPY").errors == [
        {"field": "amount", "message": "must not exceed 50.005"}
    ]


def test_allow_zero_still_refuses_bad_shapes() -> None:
    assert _refusal("amount", "", "CNY", allow_zero=True).errors == [
        {"field": "amount", "message": NOT_MONEY}
    ]
