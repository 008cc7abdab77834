"""Identifiers: Crockford base32 of a 128-bit ULID value, sorting as the values do."""

import time

from hypothesis import given
from hypothesis import strategies as st

from app.ids import encode, new_id, new_ids

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


def test_ids_made_together_are_distinct_and_of_one_instant() -> None:
    ids = new_ids("flag", 5000)
    assert len(set(ids)) == 5000
    assert all(i.startswith("flag_") and len(i) == 31 for i in ids)
    assert len({i[5:15] for i in ids}) == 1
    assert ids == sorted(ids)  # rows written in their order sort by id in it
    assert ids[0][5:15] <= new_id("flag")[5:15]
    assert new_ids("evt", 0) == []


def test_ids_made_together_are_ulids_of_their_instant() -> None:
    before = time.time_ns() // 1_000_000
    made = new_ids("evt", 300)
    after = time.time_ns() // 1_000_000
    values = [sum(CROCKFORD.index(d) << (5 * n) for n, d in enumerate(reversed(i[4:])))
              for i in made]  # fmt: skip
    assert [encode(value) for value in values] == [i[4:] for i in made]
    assert all(before <= value >> 80 <= after for value in values)
    assert len({value & (2**80 - 1) for value in values}) == 300
