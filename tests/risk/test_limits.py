"""The credit-limit policy (app/risk/limits.py) on its own: pure, no database."""

from datetime import date

from app.risk.limits import next_limit

AS_OF = date(2026, 9, 30)


def move(**overrides: object) -> tuple[int, int | None, str] | None:
    given: dict[str, object] = {
        "previous_grade": "A", "grade": "A", "credit_limit_minor": 1_000, "exposure_minor": 500,
        "limit_before_cut_minor": 10_000, "limit_changed_on": date(2026, 1, 1),
        "clean_since": date(2026, 3, 1), "clean_days_required": 182, "as_of": AS_OF,
    }  # fmt: skip
    change = next_limit(**{**given, **overrides})  # type: ignore[arg-type]
    return None if change is None else (change.credit_limit_minor,
                                         change.limit_before_cut_minor, change.reason)  # fmt: skip


def test_grade_d_or_e_cuts_to_exposure_and_remembers_the_limit() -> None:
    assert move(grade="D", credit_limit_minor=8_000, limit_before_cut_minor=None) == (
        500, 8_000, "grade_D",
    )  # fmt: skip
    assert move(grade="E", credit_limit_minor=500) is None  # nothing left to cut
    assert move(previous_grade="D", grade="E", credit_limit_minor=8_000) == (
        500, 10_000, "grade_E",
    )  # fmt: skip


def test_only_the_fall_to_d_or_e_cuts() -> None:
    # The grade held: the limit (an admin's override, say) stays whatever the exposure.
    assert move(previous_grade="D", grade="D", credit_limit_minor=8_000) is None
    assert move(previous_grade="E", grade="E", credit_limit_minor=8_000) is None
    assert move(previous_grade="E", grade="D", credit_limit_minor=8_000) is None  # better


def test_recovery_waits_for_sustained_good_behaviour() -> None:
    assert move(clean_since=None) is None  # past due now
    assert move(clean_since=date(2026, 4, 2)) is None  # 181 days
    assert move(clean_since=date(2026, 4, 1)) == (3_500, 10_000, "recovery")  # 182 days


def test_recovery_is_monthly_gradual_and_stops_at_the_remembered_limit() -> None:
    assert move(limit_changed_on=date(2026, 9, 1)) is None  # 29 days since the last move
    assert move(limit_changed_on=date(2026, 8, 31)) == (3_500, 10_000, "recovery")
    assert move(credit_limit_minor=9_000) == (10_000, None, "recovery")
    assert move(grade="C") is None
    assert move(limit_before_cut_minor=None) is None  # never cut: nothing to restore
    assert move(credit_limit_minor=12_000) is None  # an override above it: never lowered
