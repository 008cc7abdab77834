"""Identifiers: Crockford base32 of a 128-bit ULID value, sorting as the values do."""

from hypothesis import given
from hypothesis import strategies as st

from app.ids import encode, new_id

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
VALUES = st.integers(min_value=0, max_value=2**128 - 1)


def digit_by_digit(value: int) -> str:
    """The plain definition: 26 digits of 5 bits, most significant first."""
    return "".join(CROCKFORD[(value >> (5 * n)) & 31] for n in reversed(range(26)))


@given(VALUES)
def test_encode_is_base32_digit_by_digit(value: int) -> None:
    assert encode(value) == digit_by_digit(value)


@given(VALUES, VALUES)
def test_encoded_values_sort_as_the_values(a: int, b: int) -> None:
    assert (encode(a) < encode(b)) == (a < b)


def test_ids_carry_their_prefix_and_sort_by_creation() -> None:
    ids = [new_id("loan") for _ in range(1000)]
    assert all(i.startswith("loan_") and len(i) == 31 for i in ids)
    assert len(set(ids)) == 1000
    milliseconds = [i[5:15] for i in ids]  # the first 10 digits: 48 bits of time, and 2 zero
    assert milliseconds == sorted(milliseconds)
