"""The score: the close's score alone agrees with the explained score, whose reasons add up."""

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.risk.score import FADE_DAYS, FlagFact, grade_for, score_loan, score_value

AS_OF = date(2026, 12, 3)
FLAGS = st.lists(
    st.builds(
        FlagFact,
        code=st.sampled_from(["never_paid", "late_drift", "payment_reversal"]),
        severity=st.sampled_from(["low", "medium", "high", "critical"]),
        cleared_on=st.none() | st.integers(0, 2 * FADE_DAYS).map(lambda d: AS_OF - timedelta(d)),
        raised_on=st.integers(0, 3 * FADE_DAYS).map(lambda d: AS_OF - timedelta(d)),
    ),
    max_size=8,
)


@given(st.integers(0, 400), FLAGS)
def test_the_score_alone_is_the_explained_score(days_past_due: int, flags: list[FlagFact]) -> None:
    explained = score_loan(days_past_due, flags, AS_OF)
    assert score_value(days_past_due, flags, AS_OF) == explained.score
    assert explained.grade == grade_for(explained.score)
    deducted = -sum(int(str(reason["points"])) for reason in explained.reasons)
    assert explained.score == max(1000 - deducted, 0)


def test_a_flag_cleared_half_the_fade_ago_weighs_half() -> None:
    half = FlagFact("never_paid", "critical", AS_OF - timedelta(FADE_DAYS // 2), date(2026, 1, 5))
    gone = FlagFact("never_paid", "critical", AS_OF - timedelta(FADE_DAYS), date(2026, 1, 5))
    assert score_value(0, [half, gone], AS_OF) == 850
    assert score_value(10, [], AS_OF) == 970
    assert score_value(200, [], AS_OF) == 600
    assert [grade_for(s) for s in (1000, 800, 799, 650, 500, 300, 299, 0)] == list("AABBCDEE")


# Cleared about the date scored, the day after it included.
LATELY_CLEARED = st.lists(
    st.builds(
        FlagFact,
        code=st.just("never_paid"),
        severity=st.sampled_from(["low", "medium", "high", "critical"]),
        cleared_on=st.integers(-3, 3).map(lambda d: AS_OF - timedelta(d)),
        raised_on=st.just(AS_OF - timedelta(30)),
    ),
    min_size=1,
    max_size=4,
)


@given(st.integers(0, 400), LATELY_CLEARED)
def test_a_cleared_flag_never_weighs_more_than_an_open_one(
    days_past_due: int, flags: list[FlagFact]
) -> None:
    """Not even one cleared after the date scored (a payment dated after the business date
    cleared it): a critical one weighed 302 (a tester's)."""
    opened = [FlagFact(f.code, f.severity, None, f.raised_on) for f in flags]
    assert score_value(days_past_due, flags, AS_OF) >= score_value(days_past_due, opened, AS_OF)


def test_a_flag_cleared_on_the_day_another_of_its_code_is_raised_goes_on_as_that_one() -> None:
    """Cleared by one rules change and raised again by the next, on one day, the behaviour
    counted twice, open and fading (a tester's); cleared again since, it still counts once.
    A relapse on a later day is a second episode: both weigh, and it never scores better
    than the cure before it (it did, by 100 points, when every cleared flag of an open code
    was let off: a tester's)."""
    raised, flip = AS_OF - timedelta(40), AS_OF - timedelta(20)
    cleared_by_the_change = FlagFact("late_drift", "high", flip, raised)
    raised_again = FlagFact("late_drift", "high", None, flip)
    other = FlagFact("payment_reversal", "medium", AS_OF - timedelta(FADE_DAYS // 2), raised)
    assert score_value(0, [cleared_by_the_change, raised_again], AS_OF) == 850
    explained = score_loan(0, [cleared_by_the_change, raised_again, other], AS_OF)
    assert explained.score == 850 - 38
    assert [(r["code"], r["cleared"]) for r in explained.reasons] == [
        ("late_drift", False), ("payment_reversal", True)
    ]  # fmt: skip
    cleared_again = FlagFact("late_drift", "high", AS_OF, flip)
    assert score_value(0, [cleared_by_the_change, cleared_again], AS_OF) == 850
    # Raised and cleared again on one day, a chain: the last of it weighs, once (each let
    # the other off, and a loan with arrears behind it scored 1000: a re-verifier's).
    day = AS_OF - timedelta(10)
    same_day = [FlagFact("dpd_roll_forward", "low", day, AS_OF - timedelta(11)),
                *[FlagFact("dpd_roll_forward", "low", day, day) for _ in range(3)]]  # fmt: skip
    assert score_value(0, same_day, AS_OF) == 1000 - round(25 * (1 - 10 / FADE_DAYS))
    cured = [FlagFact("late_drift", "high", AS_OF - timedelta(1), raised)]
    relapsed = [*cured, FlagFact("late_drift", "high", None, AS_OF)]
    assert score_value(3, relapsed, AS_OF) < score_value(0, cured, AS_OF) < 1000


def test_a_flag_raised_again_within_one_a_payment_cleared_is_one_episode() -> None:
    """A payment today cleared flags raised a week ago; a rerun of yesterday's close raised
    them again, dated yesterday, and tonight's close cleared those: each behaviour weighed
    twice, fading, and the borrower stayed at E where one close a day left D (a tester's)."""
    week_ago, yesterday = AS_OF - timedelta(6), AS_OF - timedelta(1)
    once = [FlagFact(code, "critical", AS_OF, week_ago) for code in ("never_paid", "late_drift")]
    again = [FlagFact(f.code, f.severity, AS_OF, yesterday) for f in once]
    assert score_value(0, once + again, AS_OF) == score_value(0, once, AS_OF) == 400
    # One raised within the episode weighs only if it weighs more (a higher severity).
    worse = FlagFact("never_paid", "high", None, yesterday)
    lighter = FlagFact("never_paid", "low", None, yesterday)
    first = FlagFact("never_paid", "medium", AS_OF - timedelta(1), week_ago)
    assert score_value(0, [first, worse], AS_OF) == 850
    assert score_value(0, [first, lighter], AS_OF) == 1000 - 75


@given(st.integers(0, 400), FLAGS, FLAGS)
def test_a_new_flag_never_raises_the_score(
    days_past_due: int, flags: list[FlagFact], more: list[FlagFact]
) -> None:
    """Flags raised after every flag already there (a later episode) only ever cost points."""
    latest = max([AS_OF - timedelta(3 * FADE_DAYS), *(f.cleared_on or f.raised_on for f in flags)])
    later = [FlagFact(f.code, f.severity, None, latest + timedelta(1)) for f in more]
    assert score_value(days_past_due, flags + later, AS_OF) <= score_value(
        days_past_due, flags, AS_OF
    )


# Raised and cleared within a few days of each other: chains of flags on one day.
CHAINED = st.lists(
    st.builds(
        FlagFact,
        code=st.sampled_from(["never_paid", "late_drift"]),
        severity=st.sampled_from(["low", "medium", "high", "critical"]),
        cleared_on=st.none() | st.integers(0, 3).map(lambda d: AS_OF - timedelta(d)),
        raised_on=st.integers(0, 3).map(lambda d: AS_OF - timedelta(d)),
    ),
    max_size=6,
)


@given(st.integers(0, 400), CHAINED)
def test_chained_flags_of_one_code_never_cancel_each_other_out(
    days_past_due: int, flags: list[FlagFact]
) -> None:
    """However flags chain, a code with flags that still weigh takes off at least what one of
    them would alone: chained episodes never cancel each other out."""
    for code in {f.code for f in flags}:
        own = [f for f in flags if f.code == code]
        alone = max(score_value(days_past_due, [f], AS_OF) for f in own)
        assert score_value(days_past_due, own, AS_OF) <= alone
