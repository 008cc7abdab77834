"""Repayment schedules (app/loans/schedule.py): pure, so tested exhaustively without a database.

Expected amounts are computed here with exact rational arithmetic (``fractions``), not with the
module's own ``decimal`` code, so a test never just replays the implementation.
"""

import calendar
import itertools
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

import numpy_financial as npf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.loans import schedule as schedule_module
from app.loans.schedule import (
    Amortization,
    FeeCollection,
    InstallmentsDoNotFit,
    ScheduledInstallment,
    ScheduleTerms,
    annuity_payment,
    build_schedule,
    default_first_due_date,
    deferred,
    due_dates,
    extended,
    first_period_days,
    monthly_rate,
)
from app.money import Rounding

# An equal-installment loan of a few yuan over many months repays a few minor units of
# principal a month, and rounding its interest can repay it before the last month: the level
# payment then stops early (see test_degenerate_tiny_loans). Searched exhaustively over terms
# 1-60, both rounding modes, principals up to 12.00 and every rate 0-36 % with four decimals
# (and every six-decimal rate near the boundary): the largest principal whose level payment
# breaks is 8.25 (60 months at 0.72 %); the largest repaid before its last month, with a zero
# last installment, is 8.85 (60 months at 0.67 %).
LEVEL_HOLDS_FROM_MINOR = 826
REPAID_IN_THE_LAST_MONTH_FROM_MINOR = 886

FIRST_DUE = date(2025, 1, 31)
EQUAL_INSTALLMENT = Amortization.EQUAL_INSTALLMENT


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Pure calculation: nothing in the database to truncate (overrides the conftest fixture)."""


def exact_round(value: Fraction, rounding: Rounding) -> int:
    floor = value.numerator // value.denominator
    rest = value - floor
    if rest != Fraction(1, 2):
        return floor + (rest > Fraction(1, 2))
    return floor + 1 if rounding is Rounding.HALF_UP else floor + (floor % 2)


def exact_annuity(principal: int, annual_rate: Decimal, term: int) -> Fraction:
    rate = Fraction(annual_rate) / 12
    if rate == 0:
        return Fraction(principal, term)
    return principal * rate / (1 - (1 + rate) ** -term)


def schedule(
    principal: int,
    rate: str | Decimal,
    term: int,
    amortization: Amortization = Amortization.EQUAL_INSTALLMENT,
    *,
    rounding: Rounding = Rounding.HALF_EVEN,
    installment_multiple_of_minor: int | None = None,
    origination_fee_minor: int = 0,
    fee_collection: FeeCollection = FeeCollection.UPFRONT,
) -> list[ScheduledInstallment]:
    terms = ScheduleTerms(
        principal,
        Decimal(rate),
        term,
        amortization,
        rounding,
        installment_multiple_of_minor,
        origination_fee_minor,
        fee_collection,
    )
    return build_schedule(terms, FIRST_DUE)


def exact_level(principal: int, annual_rate: Decimal, term: int, first_days: int) -> Fraction:
    """The level payment over a first period of ``first_days`` (30/360): the principal grown by
    the first period's interest is the payment plus the annuity of the other ``term - 1``
    payments. If the first period's interest alone is more, the first installment is that
    interest and the other ``term - 1`` repay the principal."""
    rate, first = Fraction(annual_rate) / 12, Fraction(first_days, 30)
    level = exact_annuity(principal, annual_rate, term) * (1 + rate * first) / (1 + rate)
    if principal * rate * first > level:
        return exact_annuity(principal, annual_rate, term - 1)
    return level


def totals(installments: list[ScheduledInstallment]) -> list[int]:
    """Principal + interest of each installment (fees are a separate matter)."""
    return [i.principal_minor + i.interest_minor for i in installments]


def schedule_or_refusal(terms: ScheduleTerms) -> list[ScheduledInstallment] | None:
    """The schedule, or None where installments in its multiples do not fit the loan."""
    try:
        return build_schedule(terms, FIRST_DUE)
    except InstallmentsDoNotFit:
        return None


def assert_sound(installments: list[ScheduledInstallment], terms: ScheduleTerms) -> None:
    """What holds for every schedule, however degenerate the loan."""
    assert [i.seq for i in installments] == list(range(1, terms.term + 1))
    assert sum(i.principal_minor for i in installments) == terms.principal_minor
    assert sum(i.fees_minor for i in installments) == terms.origination_fee_minor
    rate = Fraction(terms.annual_rate) / 12
    outstanding = terms.principal_minor
    for inst in installments:
        assert inst.principal_minor >= 0
        assert inst.interest_minor >= 0
        assert inst.fees_minor >= 0
        # Interest is the monthly rate on the principal outstanding, rounded to the minor unit;
        # the first period's for its length in 30-day months.
        months = Fraction(terms.first_period_days, 30) if inst.seq == 1 else 1
        assert inst.interest_minor == exact_round(outstanding * rate * months, terms.rounding)
        outstanding -= inst.principal_minor
    assert outstanding == 0


principals = st.integers(100, 100_000_000)  # 1.00 to 1,000,000.00 CNY
# A first period of 1 to 92 calendar days is 1 to 93 days of 30/360 (Jan 31 to Mar 1 is 31).
first_periods = st.integers(1, 93)
rates = st.one_of(
    st.integers(0, 3600).map(lambda bp: Decimal(bp).scaleb(-4)),  # "0.1299"
    st.integers(0, 360_000).map(lambda m: Decimal(m).scaleb(-6)),  # up to six decimals
)
term_lengths = st.integers(1, 60)
roundings = st.sampled_from(list(Rounding))
multiples = st.sampled_from([1, 5, 10, 50, 100, 500, 1000, 10_000])


# --- the golden example ---------------------------------------------------------------------


def test_golden_6000_at_12_99_percent_over_12_months() -> None:
    rate = Fraction(1299, 10000) / 12
    assert rate == Fraction("0.010825")
    # P * r / (1 - (1 + r)^-n), exactly: 535.8755...
    level = 600000 * rate / (1 - (1 + rate) ** -12)
    assert Fraction(5358755, 100) < level < Fraction(5358756, 100)
    assert 600000 * rate == 6495  # 6000.00 * 0.010825 = 64.95, no rounding needed

    installments = schedule(600000, "0.1299", 12)

    assert totals(installments)[:11] == [53588] * 11
    assert installments[0] == ScheduledInstallment(1, date(2025, 1, 31), 47093, 6495, 0)
    # 552,907 outstanding * 0.010825 = 5985.218... -> 59.85
    assert installments[1] == ScheduledInstallment(2, date(2025, 2, 28), 47603, 5985, 0)
    assert [i.interest_minor for i in installments] == [
        6495, 5985, 5470, 4949, 4423, 3890, 3352, 2809, 2259, 1703, 1142, 574,
    ]  # fmt: skip
    # The last installment takes what is left: 530.09 of principal plus 5.74 of interest.
    assert installments[-1] == ScheduledInstallment(12, date(2025, 12, 31), 53009, 574, 0)
    assert sum(i.principal_minor for i in installments) == 600000
    assert sum(i.interest_minor for i in installments) == 43051
    assert float(npf.pmt(0.1299 / 12, 12, -6000)) == pytest.approx(535.8755, abs=1e-4)


def test_golden_example_with_a_whole_yuan_installment() -> None:
    installments = schedule(600000, "0.1299", 12, installment_multiple_of_minor=100)
    assert totals(installments) == [53600] * 11 + [53443]
    assert installments[0] == ScheduledInstallment(1, date(2025, 1, 31), 47105, 6495, 0)
    assert sum(i.principal_minor for i in installments) == 600000


def test_golden_example_in_equal_principal() -> None:
    installments = schedule(600000, "0.1299", 12, Amortization.EQUAL_PRINCIPAL)
    assert [i.principal_minor for i in installments] == [50000] * 12
    # 6000.00, 5500.00, ... outstanding at 1.0825 % a month
    assert [i.interest_minor for i in installments] == [
        6495, 5954, 5412, 4871, 4330, 3789, 3248, 2706, 2165, 1624, 1082, 541,
    ]  # fmt: skip


# --- properties of every schedule -----------------------------------------------------------


@given(
    st.integers(1, 100_000_000),
    rates,
    term_lengths,
    st.sampled_from(list(Amortization)),
    roundings,
    st.one_of(st.none(), multiples),
    st.integers(0, 10_000_000),
    st.sampled_from(list(FeeCollection)),
)
def test_every_schedule_sums_exactly_and_has_no_negative_amount(
    principal: int,
    rate: Decimal,
    term: int,
    amortization: Amortization,
    rounding: Rounding,
    multiple: int | None,
    fee: int,
    collection: FeeCollection,
) -> None:
    if amortization is Amortization.INTEREST_FREE:
        rate = Decimal(0)
    terms = ScheduleTerms(principal, rate, term, amortization, rounding, multiple, fee, collection)
    installments = schedule_or_refusal(terms)
    if installments is None:
        # Only a multiple can be too large for a loan (test_a_multiple_too_large_...).
        assert (multiple or 1) > 1
        assert amortization is not Amortization.EQUAL_PRINCIPAL
        return
    assert_sound(installments, terms)
    assert [i.due_date for i in installments] == due_dates(FIRST_DUE, term)


@given(principals, rates, term_lengths, roundings)
def test_level_payment_agrees_with_numpy_financial(
    principal: int, rate: Decimal, term: int, rounding: Rounding
) -> None:
    installments = schedule(principal, rate, term, rounding=rounding)
    level = totals(installments)[0]
    expected = npf.pmt(float(rate) / 12, term, -principal)
    assert abs(level - float(expected)) <= 1
    assert abs(level - exact_annuity(principal, rate, term)) <= 1


@given(st.integers(LEVEL_HOLDS_FROM_MINOR, 100_000_000), rates, term_lengths, roundings)
def test_equal_installments_are_level_except_the_last(
    principal: int, rate: Decimal, term: int, rounding: Rounding
) -> None:
    terms = ScheduleTerms(principal, rate, term, Amortization.EQUAL_INSTALLMENT, rounding)
    installments = build_schedule(terms, FIRST_DUE)
    assert_sound(installments, terms)
    level = totals(installments)[0]
    assert totals(installments)[:-1] == [level] * (term - 1)
    # The rounded payment, or the floored one where rounding up would repay the loan early.
    assert abs(level - exact_annuity(principal, rate, term)) < 1
    if principal >= REPAID_IN_THE_LAST_MONTH_FROM_MINOR:
        assert installments[-1].principal_minor > 0


@given(
    st.one_of(st.integers(1, LEVEL_HOLDS_FROM_MINOR), principals),
    rates,
    st.integers(2, 60),
    roundings,
    st.sampled_from([None, 1]),
)
def test_the_level_holds_until_the_loan_is_repaid_then_nothing_is_due(
    principal: int, rate: Decimal, term: int, rounding: Rounding, multiple: int | None
) -> None:
    """The shape of every equal-installment schedule without a multiple (a multiple of one
    minor unit rounds nothing), degenerate ones included: the level payment, then (only if
    rounding repaid the loan early) one short installment and zeros. Origination refuses
    the zeros."""
    terms = ScheduleTerms(principal, rate, term, EQUAL_INSTALLMENT, rounding, multiple)
    installments = build_schedule(terms, FIRST_DUE)
    assert_sound(installments, terms)
    *body, last = totals(installments)
    level = body[0]
    held = next((k for k, total in enumerate(body) if total != level), len(body))
    if held < len(body):
        short, *zeros = body[held:]
        assert short < level
        assert zeros == [0] * len(zeros)
        assert last == 0  # the loan was repaid before its last month
        assert principal < LEVEL_HOLDS_FROM_MINOR
    assert abs(level - exact_annuity(principal, rate, term)) <= 1


def test_degenerate_tiny_loans() -> None:
    """Loans of a few yuan over many months: the monthly principal part is a few minor units,
    so rounding the interest can repay the loan before its last period. The installments then
    stop early: the one that finishes the loan is short and the rest are zero. Still nothing is
    negative and the principal parts still sum exactly."""
    # 1.55 at 3.2306 % over 40 months: the level 0.04 holds for 38 months, then 0.03 and 0.00.
    installments = schedule(155, "0.032306", 40)
    assert_sound(installments, ScheduleTerms(155, Decimal("0.032306"), 40, EQUAL_INSTALLMENT))
    assert totals(installments) == [4] * 38 + [3, 0]
    # 6.44 at 1 % over 60 months: level 0.11, repaid exactly by month 59; the 60th is zero.
    installments = schedule(644, "0.01", 60)
    assert totals(installments) == [11] * 59 + [0]
    assert installments[-1] == ScheduledInstallment(60, date(2029, 12, 31), 0, 0, 0)
    # The boundaries: 8.25 at 0.72 % (and 8.85 at 0.67 %) over 60 months.
    assert totals(schedule(825, "0.0072", 60)) == [14] * 58 + [13, 0]
    assert totals(schedule(885, "0.0067", 60)) == [15] * 59 + [0]
    assert totals(schedule(826, "0.0072", 60))[:-1] == [14] * 59
    # 1.00 at 36 % over 60 months: 0.03 a month is the interest alone, so the level payment is
    # the nearest 0.04 (not 0.03, which would leave the whole 1.00 to the last month).
    installments = schedule(100, "0.36", 60)
    assert totals(installments) == [4] * 49 + [0] * 11
    assert [i.interest_minor for i in installments[:18]] == [3] * 17 + [2]


# --- the first period ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disbursed_on", "first_due_date", "days"),
    [
        (date(2026, 1, 15), date(2026, 2, 15), 30),  # the default: a month
        (date(2026, 1, 1), date(2026, 1, 2), 1),
        (date(2026, 1, 1), date(2026, 1, 31), 30),  # 30 days, not yet a month
        (date(2026, 1, 1), date(2026, 2, 1), 30),
        (date(2026, 1, 1), date(2026, 4, 3), 92),  # three months and two days: 92 calendar days
        (date(2026, 2, 1), date(2026, 3, 1), 30),  # a month of 28 days
        (date(2026, 1, 31), date(2026, 2, 28), 30),  # the default: clamped at month end
        (date(2026, 1, 31), date(2026, 3, 1), 31),
        (date(2026, 1, 31), date(2026, 3, 31), 60),  # the day kept: Mar 31, not Mar 28
        (date(2026, 1, 31), date(2026, 2, 27), 27),
        (date(2024, 1, 31), date(2024, 2, 29), 30),  # leap year
        (date(2026, 2, 28), date(2026, 3, 31), 33),
        (date(2026, 11, 20), date(2027, 1, 5), 46),  # over the year end: a month and 16 days
    ],
)
def test_first_period_days(disbursed_on: date, first_due_date: date, days: int) -> None:
    assert first_period_days(disbursed_on, first_due_date) == days


def add_months(day: date, months: int) -> date:
    """The calendar's month arithmetic, the day of month kept and clamped at month end."""
    year, month = divmod(day.month - 1 + months, 12)
    year, month = day.year + year, month + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@given(st.dates(date(2000, 1, 1), date(2095, 12, 31)), st.integers(1, 92))
def test_first_period_days_are_whole_months_and_the_days_left(
    start: date, calendar_days: int
) -> None:
    first_due = start + timedelta(days=calendar_days)
    days = first_period_days(start, first_due)
    months = max(k for k in range(4) if add_months(start, k) <= first_due)
    assert days == 30 * months + (first_due - add_months(start, months)).days
    assert 1 <= days <= 93
    assert first_period_days(start, default_first_due_date(start)) == 30
    later = first_period_days(start, first_due + timedelta(days=1))
    assert later > days or add_months(start, months + 1) == first_due + timedelta(days=1)


def test_the_first_period_is_charged_for_its_length() -> None:
    """12000.00 at 12.99 % charged 129.90 for the first period whether it lasted a day or 92.
    A day is 1/30 of a month's interest, 92 days (three months and two) 92/30 of it. The
    installment stays level over the first period's own length: a long first period's extra
    interest is spread over every installment, not left to the last (it was 1373.96 after
    eleven of 1071.75), and a short one's saving likewise (the last was 930.39)."""
    month = schedule(1200000, "0.1299", 12)
    assert [i.total_minor for i in month[:-1]] == [107175] * 11
    assert month[0] == ScheduledInstallment(1, date(2025, 1, 31), 94185, 12990, 0)
    day = build_schedule(ScheduleTerms(1200000, Decimal("0.1299"), 12, EQUAL_INSTALLMENT,
                                       first_period_days=1), FIRST_DUE)  # fmt: skip
    assert day[0] == ScheduledInstallment(1, date(2025, 1, 31), 105633, 433, 0)  # 12000 * r / 360
    assert totals(day) == [106066] * 11 + [106063]
    quarter = build_schedule(ScheduleTerms(1200000, Decimal("0.1299"), 12, EQUAL_INSTALLMENT,
                                           first_period_days=92), FIRST_DUE)  # fmt: skip
    assert quarter[0] == ScheduledInstallment(1, date(2025, 1, 31), 69711, 39836, 0)
    assert totals(quarter) == [109547] * 11 + [109548]
    # In whole yuan the extra interest is spread over the installments, not left to the last.
    rounded = build_schedule(ScheduleTerms(1200000, Decimal("0.1299"), 12, EQUAL_INSTALLMENT,
                                           installment_multiple_of_minor=100,
                                           first_period_days=92), FIRST_DUE)  # fmt: skip
    assert totals(rounded) == [109600] * 6 + [109500] * 5 + [109443]
    # Equal principal: the same principal, the first period's interest.
    quarter = build_schedule(ScheduleTerms(1200000, Decimal("0.1299"), 12,
                                           Amortization.EQUAL_PRINCIPAL,
                                           first_period_days=92), FIRST_DUE)  # fmt: skip
    assert [(i.principal_minor, i.interest_minor) for i in quarter[:2]] == [
        (100000, 39836), (100000, 11908),
    ]  # fmt: skip


def test_a_first_period_longer_than_the_installment_pays_is_its_interest() -> None:
    """12000.00 at 36 % over 36 months is 549.65 a month; 93 days of interest are 1116.00.
    The first installment is that interest, repaying nothing, never a negative principal; the
    other 35 repay the 12000.00 level, 558.47 each."""
    installments = build_schedule(ScheduleTerms(1200000, Decimal("0.36"), 36, EQUAL_INSTALLMENT,
                                                 first_period_days=93), FIRST_DUE)  # fmt: skip
    assert installments[0] == ScheduledInstallment(1, date(2025, 1, 31), 0, 111600, 0)
    assert (installments[1].principal_minor, installments[1].interest_minor) == (19847, 36000)
    assert totals(installments)[1:] == [55847] * 34 + [55855]


@given(
    principals,
    rates,
    st.integers(1, 60),
    st.sampled_from(list(Amortization)),
    roundings,
    first_periods,
)
def test_every_first_period_keeps_the_schedule_sound(
    principal: int,
    rate: Decimal,
    term: int,
    amortization: Amortization,
    rounding: Rounding,
    first_period: int,
) -> None:
    if amortization is Amortization.INTEREST_FREE:
        rate = Decimal(0)
    terms = ScheduleTerms(principal, rate, term, amortization, rounding)
    a_month = build_schedule(terms, FIRST_DUE)
    assert build_schedule(replace(terms, first_period_days=30), FIRST_DUE) == a_month
    other = replace(terms, first_period_days=first_period)
    installments = build_schedule(other, FIRST_DUE)
    assert_sound(installments, other)
    if amortization is Amortization.EQUAL_PRINCIPAL:
        # Only the first installment's interest changes.
        assert [i.principal_minor for i in installments] == [i.principal_minor for i in a_month]
        assert installments[1:] == a_month[1:]
    elif principal >= LEVEL_HOLDS_FROM_MINOR and term > 2:
        # Level over the first period's length: the first repays what its interest leaves of
        # the level, or (its interest alone more than the level) nothing, and the others repay
        # the principal level. The last differs by the rounding of the installments alone.
        first, *body, last = totals(installments)
        level = body[0]
        assert body == [level] * (term - 2)
        assert first == max(level, installments[0].interest_minor)
        assert abs(level - exact_level(principal, rate, term, first_period)) <= 1
        assert abs(last - level) <= 2 * term


# --- equal principal, interest free -----------------------------------------------------


@given(st.integers(1, 100_000_000), rates, term_lengths, roundings)
def test_equal_principal_parts_are_equal_except_the_last(
    principal: int, rate: Decimal, term: int, rounding: Rounding
) -> None:
    terms = ScheduleTerms(principal, rate, term, Amortization.EQUAL_PRINCIPAL, rounding)
    installments = build_schedule(terms, FIRST_DUE)
    assert_sound(installments, terms)
    share = installments[0].principal_minor
    assert [i.principal_minor for i in installments[:-1]] == [share] * (term - 1)
    nearest = exact_round(Fraction(principal, term), rounding)
    # The rounded share, unless the last installment would go negative: then the floor.
    assert share == (nearest if nearest * (term - 1) <= principal else principal // term)
    assert principal // term <= share <= -(-principal // term)


@pytest.mark.parametrize(
    ("principal", "term", "rounding", "parts"),
    [
        (100, 3, Rounding.HALF_EVEN, [33, 33, 34]),
        (200, 3, Rounding.HALF_EVEN, [67, 67, 66]),
        (5, 2, Rounding.HALF_EVEN, [2, 3]),  # 2.5 -> 2
        (5, 2, Rounding.HALF_UP, [3, 2]),  # 2.5 -> 3
        (9, 6, Rounding.HALF_EVEN, [1, 1, 1, 1, 1, 4]),  # 1.5 -> 2 would leave -1 for the last
        (7, 4, Rounding.HALF_EVEN, [2, 2, 2, 1]),
        (1, 3, Rounding.HALF_UP, [0, 0, 1]),
    ],
)
def test_equal_principal_examples(
    principal: int, term: int, rounding: Rounding, parts: list[int]
) -> None:
    installments = schedule(principal, "0", term, Amortization.EQUAL_PRINCIPAL, rounding=rounding)
    assert [i.principal_minor for i in installments] == parts


@given(st.integers(1, 100_000_000), term_lengths, roundings, st.integers(0, 1_000_000))
def test_interest_free_charges_no_interest(
    principal: int, term: int, rounding: Rounding, fee: int
) -> None:
    terms = ScheduleTerms(
        principal, Decimal(0), term, Amortization.INTEREST_FREE, rounding, None, fee
    )
    installments = build_schedule(terms, FIRST_DUE)
    assert_sound(installments, terms)
    assert [i.interest_minor for i in installments] == [0] * term
    equal_principal = schedule(
        principal, "0", term, Amortization.EQUAL_PRINCIPAL, rounding=rounding
    )
    assert [i.principal_minor for i in installments] == [i.principal_minor for i in equal_principal]


def test_interest_free_example() -> None:
    installments = schedule(299900, "0", 3, Amortization.INTEREST_FREE, origination_fee_minor=3000)
    assert [(i.principal_minor, i.interest_minor, i.fees_minor) for i in installments] == [
        (99967, 0, 3000),
        (99967, 0, 0),
        (99966, 0, 0),
    ]
    assert [i.total_minor for i in installments] == [102967, 99967, 99966]


@given(principals, term_lengths, roundings, st.integers(0, 10_000_000))
def test_an_interest_free_loan_with_a_spread_fee_is_paid_in_level_sums(
    principal: int, term: int, rounding: Rounding, fee: int
) -> None:
    """What the borrower pays each month is level, the fee's share inside it, the last the
    residual. A fee so much larger than the principal that a level sum would leave a principal
    part negative shares the principal evenly instead, as without a fee."""
    terms = ScheduleTerms(
        principal, Decimal(0), term, Amortization.INTEREST_FREE, rounding, None, fee,
        FeeCollection.SPREAD,
    )  # fmt: skip
    installments = build_schedule(terms, FIRST_DUE)
    assert_sound(installments, terms)
    # A multiple of one minor unit rounds nothing (decisions.md, "Terms").
    assert (
        build_schedule(replace(terms, installment_multiple_of_minor=1), FIRST_DUE) == installments
    )
    spread = schedule(principal, "0.1299", term, rounding=rounding, origination_fee_minor=fee,
                      fee_collection=FeeCollection.SPREAD)  # fmt: skip
    assert [i.fees_minor for i in installments] == [i.fees_minor for i in spread]
    *body, last = [i.total_minor for i in installments]
    level = exact_round(Fraction(principal + fee, term), rounding)
    if level * (term - 1) > principal + fee:
        level = (principal + fee) // term
    if body != [level] * (term - 1):
        even = schedule(principal, "0", term, Amortization.EQUAL_PRINCIPAL, rounding=rounding)
        assert [i.principal_minor for i in installments] == [i.principal_minor for i in even]
        # Each level sum's principal part is the principal's share within two minor units.
        assert principal < 2 * term * term
        return
    assert last == principal + fee - level * (term - 1)


@pytest.mark.parametrize(
    ("principal", "fee", "term", "totals"),
    [
        # 3.5 % of 3,333.33 spread: 575.01 five times and 574.95, rounded apart (a tester's).
        (333333, 11667, 6, [57500] * 6),
        (150000, 5250, 12, [12938] * 11 + [12932]),
        (100000, 3000, 12, [8583] * 11 + [8587]),
    ],
)
def test_interest_free_spread_fee_examples(
    principal: int, fee: int, term: int, totals: list[int]
) -> None:
    installments = schedule(principal, "0", term, Amortization.INTEREST_FREE,
                            rounding=Rounding.HALF_UP, origination_fee_minor=fee,
                            fee_collection=FeeCollection.SPREAD)  # fmt: skip
    assert [i.total_minor for i in installments] == totals


# --- origination fee ------------------------------------------------------------------------


@given(
    principals,
    rates,
    term_lengths,
    st.sampled_from(list(Amortization)),
    roundings,
    st.integers(0, 10_000_000),
)
def test_upfront_fee_is_all_on_the_first_installment(
    principal: int,
    rate: Decimal,
    term: int,
    amortization: Amortization,
    rounding: Rounding,
    fee: int,
) -> None:
    if amortization is Amortization.INTEREST_FREE:
        rate = Decimal(0)
    with_fee = schedule(
        principal, rate, term, amortization, rounding=rounding, origination_fee_minor=fee
    )
    assert [i.fees_minor for i in with_fee] == [fee] + [0] * (term - 1)
    without = schedule(principal, rate, term, amortization, rounding=rounding)
    assert totals(with_fee) == totals(without)  # the fee never moves principal or interest
    assert [i.total_minor for i in with_fee] == [
        t + (fee if k == 0 else 0) for k, t in enumerate(totals(without))
    ]


@given(principals, term_lengths, roundings, st.integers(0, 10_000_000))
def test_spread_fee_is_equal_with_the_last_taking_the_residual(
    principal: int, term: int, rounding: Rounding, fee: int
) -> None:
    installments = schedule(
        principal,
        "0.1299",
        term,
        rounding=rounding,
        origination_fee_minor=fee,
        fee_collection=FeeCollection.SPREAD,
    )
    fees = [i.fees_minor for i in installments]
    assert sum(fees) == fee
    assert min(fees) >= 0
    assert fees[:-1] == [fees[0]] * (term - 1)
    assert fees[-1] == fee - fees[0] * (term - 1)
    nearest = exact_round(Fraction(fee, term), rounding)
    assert fees[0] == (nearest if nearest * (term - 1) <= fee else fee // term)


@pytest.mark.parametrize(
    ("fee", "term", "rounding", "fees"),
    [
        (1000, 3, Rounding.HALF_EVEN, [333, 333, 334]),
        (100, 12, Rounding.HALF_EVEN, [8] * 11 + [12]),
        (5, 2, Rounding.HALF_EVEN, [2, 3]),
        (5, 2, Rounding.HALF_UP, [3, 2]),
        (9, 6, Rounding.HALF_UP, [1, 1, 1, 1, 1, 4]),
        (3, 4, Rounding.HALF_EVEN, [1, 1, 1, 0]),
        (12000, 1, Rounding.HALF_EVEN, [12000]),
        (0, 4, Rounding.HALF_EVEN, [0, 0, 0, 0]),
    ],
)
def test_spread_fee_examples(fee: int, term: int, rounding: Rounding, fees: list[int]) -> None:
    installments = schedule(
        600000,
        "0.1299",
        term,
        rounding=rounding,
        origination_fee_minor=fee,
        fee_collection=FeeCollection.SPREAD,
    )
    assert [i.fees_minor for i in installments] == fees


# --- installment_multiple_of ---------------------------------------------------------------


def installments_fit(
    principal: int, rate: Decimal, rounding: Rounding, installments: Sequence[int]
) -> bool:
    """Whether paying ``installments`` (all but the last) leaves something due at each, no
    principal part negative, and the last more than 0 and no larger than the one before."""
    monthly = Fraction(rate) / 12
    outstanding = principal
    for installment in installments:
        principal_part = installment - exact_round(outstanding * monthly, rounding)
        if not 0 <= principal_part < outstanding:
            return False
        outstanding -= principal_part
    last = outstanding + exact_round(outstanding * monthly, rounding)
    return 0 < last <= installments[-1]


@given(
    st.integers(100, 100_000_000),
    rates,
    st.integers(3, 36),
    roundings,
    st.sampled_from([5, 10, 50, 100, 500, 1000, 5000, 10_000]),
    st.sampled_from([Amortization.EQUAL_INSTALLMENT, Amortization.INTEREST_FREE]),
    st.one_of(st.just(30), first_periods),
    st.one_of(st.just(Fraction(0)), st.fractions(0, Fraction(1, 10))),
)
def test_installments_in_multiples_end_in_no_payment_shock(
    principal: int,
    rate: Decimal,
    term: int,
    rounding: Rounding,
    multiple: int,
    amortization: Amortization,
    first_period: int,
    fee_part: Fraction,
) -> None:
    """Every installment but the last is a whole multiple, at least one, none larger than the
    one before it; the last is the residual, more than 0 and no larger than the one before:
    no installment is empty and the principal is not left to the end. The first period may be
    longer or shorter than a month (test_the_first_period_is_charged_for_its_length). A spread
    origination fee's share is part of each installment: the borrower pays round sums."""
    if amortization is Amortization.INTEREST_FREE:
        rate = Decimal(0)
    fee = int(principal * fee_part)
    terms = ScheduleTerms(
        principal, rate, term, amortization, rounding, multiple, fee, FeeCollection.SPREAD,
        first_period_days=first_period,
    )  # fmt: skip
    installments = schedule_or_refusal(terms)
    # The level payment that repays the loan, its first period's length included, and the
    # fee's share.
    level = exact_annuity(principal, rate, term) * (1 + Fraction(rate) * first_period / 360)
    level /= 1 + Fraction(rate) / 12
    level += Fraction(fee, term)
    if installments is None:
        # Refused only where one multiple is most of the level payment (measured: under 1.3
        # of it at rates to 36 %, 1.9 to 100 %), where one multiple on every installment nearly
        # repays the loan before its last month. A fee too small to spread evenly leaves up
        # to ``term`` minor units more to the last.
        assert level < 2 * multiple + fee % term
        return
    assert_sound(installments, terms)
    *body, last = [i.total_minor for i in installments]
    assert all(total % multiple == 0 for total in body)
    assert body[-1] >= multiple
    assert body == sorted(body, reverse=True)
    assert 0 < last <= body[-1]
    drift = term
    first_owed = installments[0].interest_minor + installments[0].fees_minor
    if body[0] - multiple < first_owed:
        # A first period so long its interest is more than the level installment: the first
        # is that interest (and fee), rounded up to the multiple.
        assert level < first_owed + multiple + drift
        return
    # The first is the level payment rounded up to the multiple, give or take the few minor
    # units that rounding each period's interest moves it; more only where the multiple is so
    # large a part of it that early installments must take more to fit.
    assert body[0] > level - drift
    assert body[0] < level + multiple + drift or level < 3 * multiple


@settings(max_examples=60, deadline=None)
@given(
    st.integers(3, 5),
    st.sampled_from([5, 10, 50, 100]),
    st.data(),
    rates,
    roundings,
)
def test_installments_in_multiples_are_the_smallest_that_fit(
    term: int, multiple: int, data: st.DataObject, rate: Decimal, rounding: Rounding
) -> None:
    """Against every run of multiples, each at least one and none larger than the one before:
    refused exactly when none fits, and otherwise the first of the fitting runs in order
    (each installment the smallest with which the ones after it can still fit)."""
    principal = data.draw(st.integers(multiple, multiple * 3 * term), label="principal")
    largest = principal + exact_round(principal * Fraction(rate) / 12, rounding)
    candidates = range(-(-largest // multiple) * multiple, 0, -multiple)
    fitting = [
        run
        for run in itertools.combinations_with_replacement(candidates, term - 1)
        if installments_fit(principal, rate, rounding, run)
    ]
    terms = ScheduleTerms(principal, rate, term, EQUAL_INSTALLMENT, rounding, multiple)
    installments = schedule_or_refusal(terms)
    if installments is None:
        assert fitting == []
    else:
        assert tuple(totals(installments)[:-1]) == min(fitting)


def test_a_multiple_larger_than_the_level_payment_needs_smaller_installments_at_the_end() -> None:
    """1000.00 at 12.99 % over 12 months is 89.31 a month. In multiples of 50.00 the nearest,
    100.00, repays the loan in 11 months, and 50.00 leaves 550.87 to the last (a payment
    shock): ten of 100.00, then 50.00, then the 14.35 left."""
    installments = schedule(100000, "0.1299", 12, installment_multiple_of_minor=5000)
    assert totals(installments) == [10000] * 10 + [5000, 1435]
    assert installments[0] == ScheduledInstallment(1, date(2025, 1, 31), 8918, 1082, 0)
    # 47.53 a month over 24 months, in multiples of 10.00: not 23 of 40.00 and 245.30.
    installments = schedule(100000, "0.1299", 24, installment_multiple_of_minor=1000)
    assert totals(installments) == [5000] * 18 + [4000] * 5 + [3455]
    # Interest free, 27.78 a month over 36 months in multiples of 5.00: not 35 of 25.00 and
    # 125.00, nor 30.00 a month done in 34 months.
    installments = schedule(
        100000, "0", 36, Amortization.INTEREST_FREE, installment_multiple_of_minor=500
    )
    assert totals(installments) == [3000] * 20 + [2500] * 16


def test_a_first_installment_of_interest_is_rounded_up_to_the_multiple() -> None:
    """12,345.67 at 36 % over 36 months, first due after 92 days (30/360): that period's
    interest, 1,135.80, is more than the level installment; in whole yuan the first is 1,136.00
    (0.20 of principal), not 1,135.80."""
    terms = ScheduleTerms(1234567, Decimal("0.36"), 36, EQUAL_INSTALLMENT,
                          installment_multiple_of_minor=100, first_period_days=92)  # fmt: skip
    installments = build_schedule(terms, FIRST_DUE)
    assert installments[0] == ScheduledInstallment(1, FIRST_DUE, 20, 113580, 0)
    assert [i.total_minor for i in installments[1:4]] == [57500] * 3
    assert_sound(installments, terms)


def test_a_small_multiple_after_an_interest_only_first_installment_is_found_directly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000,000.00 at 36 % over 36 months in multiples of 0.05, first due after 92 days: the
    first installment (92,000.00 of interest) is twice the level that follows. The search for
    the second started there and stepped down 0.05 at a time, some 900,000 trial schedules
    (a tester's origination held the server for 63 s); a bisection needs a few dozen."""
    trials = itertools.count()
    last_installment = schedule_module._last_installment

    def counted(*args: object) -> int:
        next(trials)
        return last_installment(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(schedule_module, "_last_installment", counted)
    terms = ScheduleTerms(100000000, Decimal("0.36"), 36, EQUAL_INSTALLMENT,
                          installment_multiple_of_minor=5, first_period_days=92)  # fmt: skip
    installments = build_schedule(terms, FIRST_DUE)
    assert installments[0].total_minor == 9200000
    assert installments[1].total_minor == 4653930
    assert installments[-1].total_minor == 4653923
    assert_sound(installments, terms)
    assert next(trials) < 5_000


def test_a_spread_fee_is_inside_the_multiple_and_an_upfront_one_on_top() -> None:
    """The borrower pays round sums: a spread fee's share is part of each installment's
    multiple (before, 1,000.00 interest free with 30.00 spread in whole yuan was 86.50 a month).
    An upfront fee is due with the first installment, on top of its multiple."""
    spread = schedule(
        100000, "0", 12, Amortization.INTEREST_FREE, installment_multiple_of_minor=100,
        origination_fee_minor=3000, fee_collection=FeeCollection.SPREAD,
    )  # fmt: skip
    assert [i.total_minor for i in spread] == [8600] * 10 + [8500] * 2
    assert [i.fees_minor for i in spread] == [250] * 12
    upfront = schedule(
        600000, "0.1299", 12, installment_multiple_of_minor=100, origination_fee_minor=12000,
    )  # fmt: skip
    assert [i.total_minor for i in upfront] == [65600] + [53600] * 10 + [53443]


@pytest.mark.parametrize(
    ("principal", "rate", "term", "multiple"),
    [
        # 47.53 a month: 23 installments of at least 50.00 repay 1000.00 by the 23rd.
        (100000, "0.1299", 24, 5000),
        # 8.93 a month, under one multiple of 10.00.
        (9999, "0.1299", 12, 1000),
        # 9.16 a month at 36 %, in multiples of 10.00 or 50.00.
        (20000, "0.36", 36, 1000),
        (20000, "0.36", 36, 5000),
        # Interest free, 20.00 over 36 months in multiples of 1.00.
        (2000, "0", 36, 100),
    ],
)
def test_a_multiple_too_large_for_the_loan_is_refused(
    principal: int, rate: str, term: int, multiple: int
) -> None:
    """Before, the installments after the loan was repaid were 0.00 (which origination then
    refused), or the principal was left to the last installment."""
    with pytest.raises(InstallmentsDoNotFit):
        schedule(principal, rate, term, installment_multiple_of_minor=multiple)


def test_an_early_installment_takes_one_multiple_more_where_the_level_cannot_fit() -> None:
    """1653.42 at 16.54 % over 23 months is 84.41 a month. In multiples of 50.00, fifteen of
    100.00 and then 50.00 leave 50.29 last, more than the 50.00 before it; sixteen repay the loan
    before its last month. 150.00 first, then thirteen of 100.00, leaves 38.53."""
    installments = schedule(165342, "0.1654", 23, installment_multiple_of_minor=5000)
    assert totals(installments) == [15000] + [10000] * 13 + [5000] * 8 + [3853]


def test_an_interest_free_installment_is_rounded_to_the_multiple() -> None:
    installments = schedule(100000, "0", 3, Amortization.INTEREST_FREE,
                            installment_multiple_of_minor=500)  # fmt: skip
    assert [(i.principal_minor, i.interest_minor) for i in installments] == [
        (33500, 0), (33500, 0), (33000, 0),
    ]  # fmt: skip
    unrounded = schedule(100000, "0", 3, Amortization.INTEREST_FREE)
    assert [i.principal_minor for i in unrounded] == [33333, 33333, 33334]


# --- rounding modes -------------------------------------------------------------------------


def test_half_even_and_half_up_differ_on_ties() -> None:
    # 3.00 at 10 %: the first month's interest is 3.00 * 0.10 / 12 = 0.025, a tie.
    even = schedule(300, "0.10", 2, Amortization.EQUAL_PRINCIPAL, rounding=Rounding.HALF_EVEN)
    up = schedule(300, "0.10", 2, Amortization.EQUAL_PRINCIPAL, rounding=Rounding.HALF_UP)
    assert [(i.principal_minor, i.interest_minor) for i in even] == [(150, 2), (150, 1)]
    assert [(i.principal_minor, i.interest_minor) for i in up] == [(150, 3), (150, 1)]
    # 0.30 at 20 % is 0.005 of interest for the month: 0.20 / 12 has no exact decimal, but the
    # tie is still a tie. So is 3.75 at 1.6 %.
    for principal, rate, even_interest, up_interest in [(30, "0.20", 0, 1), (375, "0.016", 0, 1)]:
        for rounding, interest in [
            (Rounding.HALF_EVEN, even_interest),
            (Rounding.HALF_UP, up_interest),
        ]:
            for amortization in Amortization.EQUAL_INSTALLMENT, Amortization.EQUAL_PRINCIPAL:
                [only] = schedule(principal, rate, 1, amortization, rounding=rounding)
                assert (only.principal_minor, only.interest_minor) == (principal, interest)
    # 0.05 interest free over two months: a level payment of 0.025.
    even = schedule(5, "0", 2, rounding=Rounding.HALF_EVEN)
    up = schedule(5, "0", 2, rounding=Rounding.HALF_UP)
    assert totals(even) == [2, 3]
    assert totals(up) == [3, 2]
    # 6000.00 at 12 % (1 % a month) over 6 months: 1035.2906... a month, no tie; the interest
    # of month 3, 4059.85... * 1 % = 40.5985, is no tie either: the modes agree.
    assert totals(schedule(600000, "0.12", 6, rounding=Rounding.HALF_EVEN)) == totals(
        schedule(600000, "0.12", 6, rounding=Rounding.HALF_UP)
    )


def test_a_level_payment_is_rounded_up_to_a_multiple_in_either_mode() -> None:
    # 25.00 over 2 months interest free is 12.50 a month; in whole yuan 13, then 12: rounded
    # to 12 (the nearest, half even) the last would be 13, larger than the first.
    for rounding in Rounding:
        installments = schedule(2500, "0", 2, rounding=rounding, installment_multiple_of_minor=100)
        assert totals(installments) == [1300, 1200]


# --- the annuity ----------------------------------------------------------------------------


@given(principals, rates, term_lengths)
def test_annuity_payment_is_the_exact_formula(principal: int, rate: Decimal, term: int) -> None:
    exact = exact_annuity(principal, rate, term)
    computed = Fraction(annuity_payment(principal, rate, term))
    # 28 significant digits, less what 1 - (1 + r)^-n cancels for tiny rates: far below a
    # rounding boundary, unless the exact payment sits on one (see the example below).
    assert abs(computed - exact) < Fraction(1, 10**9)


def test_annuity_payment_examples() -> None:
    assert annuity_payment(600000, Decimal(0), 12) == 50000
    assert annuity_payment(100, Decimal(0), 3) == Decimal(100) / 3
    # Exactly 6064.95, computed a hair under: harmless, as the only installment of a one-month
    # loan is the outstanding principal plus its interest, whatever the level payment.
    assert annuity_payment(600000, Decimal("0.1299"), 1) == Decimal("606494.9999999999999999999976")
    assert schedule(600000, "0.1299", 1) == [
        ScheduledInstallment(1, date(2025, 1, 31), 600000, 6495, 0)
    ]
    assert monthly_rate(Decimal("0.1299")) == Decimal("0.010825")
    assert round(annuity_payment(600000, Decimal("0.1299"), 12), 4) == Decimal("53587.5505")


# --- due dates ------------------------------------------------------------------------------


def test_due_dates_keep_the_anchor_day_clamped_at_month_end() -> None:
    assert due_dates(date(2025, 1, 31), 4) == [
        date(2025, 1, 31),
        date(2025, 2, 28),
        date(2025, 3, 31),
        date(2025, 4, 30),
    ]
    assert due_dates(date(2024, 1, 31), 3) == [
        date(2024, 1, 31),
        date(2024, 2, 29),  # leap year
        date(2024, 3, 31),
    ]


def test_due_dates_in_leap_years() -> None:
    assert due_dates(date(2024, 2, 29), 13) == [
        date(2024, 2, 29),
        date(2024, 3, 29),
        date(2024, 4, 29),
        date(2024, 5, 29),
        date(2024, 6, 29),
        date(2024, 7, 29),
        date(2024, 8, 29),
        date(2024, 9, 29),
        date(2024, 10, 29),
        date(2024, 11, 29),
        date(2024, 12, 29),
        date(2025, 1, 29),
        date(2025, 2, 28),
    ]
    assert due_dates(date(2027, 12, 30), 3) == [
        date(2027, 12, 30),
        date(2028, 1, 30),
        date(2028, 2, 29),
    ]
    assert due_dates(date(2100, 1, 29), 2) == [date(2100, 1, 29), date(2100, 2, 28)]  # not leap
    assert due_dates(date(2000, 1, 31), 2) == [date(2000, 1, 31), date(2000, 2, 29)]  # leap


def test_due_dates_roll_over_the_year() -> None:
    assert due_dates(date(2024, 12, 31), 3) == [
        date(2024, 12, 31),
        date(2025, 1, 31),
        date(2025, 2, 28),
    ]
    assert due_dates(date(2025, 11, 15), 3) == [
        date(2025, 11, 15),
        date(2025, 12, 15),
        date(2026, 1, 15),
    ]


def test_an_anchor_day_outlives_a_short_first_month() -> None:
    # Disbursed on Jan 31: the first due date is Feb 29, but later ones return to the 31st.
    first = default_first_due_date(date(2024, 1, 31))
    assert first == date(2024, 2, 29)
    assert due_dates(first, 4, anchor_day=31) == [
        date(2024, 2, 29),
        date(2024, 3, 31),
        date(2024, 4, 30),
        date(2024, 5, 31),
    ]
    assert due_dates(first, 2) == [date(2024, 2, 29), date(2024, 3, 29)]  # no anchor: the 29th
    assert default_first_due_date(date(2025, 1, 31)) == date(2025, 2, 28)
    assert default_first_due_date(date(2025, 12, 31)) == date(2026, 1, 31)
    assert default_first_due_date(date(2025, 3, 15)) == date(2025, 4, 15)


def test_build_schedule_uses_the_anchor_day() -> None:
    installments = build_schedule(
        ScheduleTerms(300000, Decimal("0.1299"), 3, Amortization.EQUAL_INSTALLMENT),
        date(2025, 2, 28),
        31,
    )
    assert [i.due_date for i in installments] == [
        date(2025, 2, 28),
        date(2025, 3, 31),
        date(2025, 4, 30),
    ]


@given(
    st.dates(min_value=date(2000, 1, 1), max_value=date(2095, 12, 31)),
    term_lengths,
    st.one_of(st.none(), st.integers(1, 31)),
)
def test_due_dates_are_monthly(first: date, term: int, anchor: int | None) -> None:
    dates = due_dates(first, term, anchor)
    day = anchor or first.day
    assert len(dates) == term
    for k, due in enumerate(dates):
        month = first.month - 1 + k
        assert (due.year, due.month) == (first.year + month // 12, month % 12 + 1)
        next_month = date(due.year + due.month // 12, due.month % 12 + 1, 1)
        days_in_month = (next_month - date(due.year, due.month, 1)).days
        assert due.day == min(day, days_in_month)
    assert dates == sorted(set(dates))


def test_a_holiday_keeps_the_anchor_day_through_short_months() -> None:
    schedule = due_dates(date(2026, 1, 31), 4)  # Jan 31, Feb 28, Mar 31, Apr 30
    assert deferred(schedule, date(2026, 2, 1), 1) == [
        date(2026, 1, 31), date(2026, 3, 31), date(2026, 4, 30), date(2026, 5, 31),
    ]  # fmt: skip


@given(
    st.dates(date(2020, 1, 1), date(2030, 12, 31)),
    st.integers(1, 36),
    st.integers(0, 1200),
    st.integers(1, 3),
)
def test_a_holiday_moves_only_what_is_ahead(first: date, term: int, days: int, months: int) -> None:
    schedule = due_dates(first, term)
    after = first + timedelta(days=days)
    moved = deferred(schedule, after, months)
    assert moved == sorted(moved)  # still in order, and still a monthly schedule
    assert len(set(moved)) == term
    for old, new in zip(schedule, moved, strict=True):
        if old <= after:
            assert new == old
        else:
            assert new > after
            assert (new.year - old.year) * 12 + new.month - old.month == months
    ahead = [d for d in schedule if d > after]
    if ahead:
        assert moved[-len(ahead) :] == due_dates(first, term + months)[-len(ahead) :]


@given(
    principals,
    rates,
    st.integers(1, 36),
    st.sampled_from(list(Amortization)),
    roundings,
    st.integers(0, 1_000_000),
    st.sampled_from(list(FeeCollection)),
    st.data(),
)
def test_an_extension_reamortises_exactly_what_is_ahead(
    principal: int,
    rate: Decimal,
    term: int,
    amortization: Amortization,
    rounding: Rounding,
    fee: int,
    collection: FeeCollection,
    data: st.DataObject,
) -> None:
    if amortization is Amortization.INTEREST_FREE:
        rate = Decimal(0)
    first_period = data.draw(first_periods, label="first period days")
    terms = ScheduleTerms(
        principal, rate, term, amortization, rounding, None, fee, collection, first_period
    )
    schedule = build_schedule(terms, FIRST_DUE)
    due = data.draw(st.integers(0, term - 1), label="installments already due")
    months = data.draw(st.integers(1, 24), label="months")
    ahead = schedule[due:]
    new = extended(ahead, months, terms, anchor=FIRST_DUE.day)
    assert [i.seq for i in new] == list(range(due + 1, term + months + 1))
    # The principal and fees still ahead, all of it and nothing more, over the longer term.
    assert sum(i.principal_minor for i in new) == sum(i.principal_minor for i in ahead)
    assert sum(i.fees_minor for i in new) == sum(i.fees_minor for i in ahead)
    # A schedule of its own: sound, on the old dates and then monthly on the anchor day.
    again = ScheduleTerms(
        sum(i.principal_minor for i in ahead), rate, len(ahead) + months, amortization, rounding,
        None, sum(i.fees_minor for i in ahead), collection, first_period if due == 0 else 30,
    )  # fmt: skip
    assert_sound([replace(i, seq=i.seq - due) for i in new], again)
    assert [i.due_date for i in new] == due_dates(FIRST_DUE, term + months)[due:]
    # The first period's interest is the one the old schedule charged for it.
    assert new[0].interest_minor == ahead[0].interest_minor
    # Principal paid ahead on the first installment: re-amortised with the rest while the
    # first installment's new principal covers it, so that installment asks less than before;
    # beyond it, the first keeps its terms with what was paid as its principal and only the
    # principal still owed is spread from the next date, bearing interest on itself alone.
    if ahead[0].principal_minor == 0:
        return
    paid = data.draw(st.integers(1, ahead[0].principal_minor), label="paid on the first")
    prepaid = extended(ahead, months, terms, anchor=FIRST_DUE.day, principal_paid_minor=paid)
    assert sum(i.principal_minor for i in prepaid) == sum(i.principal_minor for i in ahead)
    assert sum(i.fees_minor for i in prepaid) == sum(i.fees_minor for i in ahead)
    assert [(i.seq, i.due_date) for i in prepaid] == [(i.seq, i.due_date) for i in new]
    if paid <= new[0].principal_minor:
        assert prepaid == new
        return
    assert prepaid[0] == replace(ahead[0], principal_minor=paid)
    owed = replace(
        again, principal_minor=again.principal_minor - paid, term=again.term - 1,
        origination_fee_minor=again.origination_fee_minor - ahead[0].fees_minor,
        first_period_days=30,
    )  # fmt: skip
    rest = build_schedule(owed, new[1].due_date, FIRST_DUE.day)
    assert prepaid[1:] == [replace(i, seq=i.seq + due + 1) for i in rest]
