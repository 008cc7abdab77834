"""The delinquency rules for one loan: days past due, buckets, statuses, late fees."""

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.delinquency.rules import (
    Bucket,
    DueInstallment,
    LateFeePolicy,
    bucket_for,
    days_past_due,
    late_fee_due,
    late_fee_judged_on,
    late_fee_minor,
    past_due_since,
    spell_past_due,
    status_for,
)


def inst(seq: int, due: str, unpaid: int) -> DueInstallment:
    return DueInstallment(seq, date.fromisoformat(due), unpaid)


def test_days_past_due_counts_from_the_oldest_missed_installment() -> None:
    schedule = [inst(1, "2026-01-31", 0), inst(2, "2026-02-28", 5000), inst(3, "2026-03-31", 5000)]
    assert days_past_due(date(2026, 2, 28), schedule, 100) == 0  # due today is not late
    assert days_past_due(date(2026, 3, 1), schedule, 100) == 1
    assert days_past_due(date(2026, 4, 1), schedule, 100) == 32  # from Feb 28, not Mar 31


def test_tolerance_is_exclusive() -> None:
    schedule = [inst(1, "2026-01-10", 100), inst(2, "2026-02-10", 101)]
    assert days_past_due(date(2026, 2, 20), schedule, 100) == 10  # 1.00 unpaid is not missed
    assert days_past_due(date(2026, 2, 20), schedule, 101) == 0


def test_leap_year_and_month_end_days() -> None:
    assert days_past_due(date(2024, 3, 1), [inst(1, "2024-02-29", 500)], 0) == 1
    assert days_past_due(date(2028, 3, 1), [inst(1, "2028-01-31", 500)], 0) == 30  # 29-day Feb
    assert days_past_due(date(2027, 3, 1), [inst(1, "2027-01-31", 500)], 0) == 29
    assert days_past_due(date(2027, 1, 1), [inst(1, "2026-12-31", 500)], 0) == 1


@pytest.mark.parametrize(
    ("dpd", "bucket", "label"),
    [
        (0, Bucket.CURRENT, "M0"),
        (1, Bucket.DPD_1_30, "M1"),
        (30, Bucket.DPD_1_30, "M1"),
        (31, Bucket.DPD_31_60, "M2"),
        (60, Bucket.DPD_31_60, "M2"),
        (61, Bucket.DPD_61_90, "M3"),
        (90, Bucket.DPD_61_90, "M3"),
        (91, Bucket.DPD_90_PLUS, "M3+"),
        (400, Bucket.DPD_90_PLUS, "M3+"),
    ],
)
def test_buckets_and_labels(dpd: int, bucket: Bucket, label: str) -> None:
    assert bucket_for(dpd) is bucket
    assert bucket.label == label


@pytest.mark.parametrize(
    ("dpd", "status"),
    [(0, "active"), (1, "delinquent"), (90, "delinquent"), (91, "defaulted"),
     (180, "defaulted"), (181, "charged_off")],
)  # fmt: skip
def test_statuses(dpd: int, status: str) -> None:
    assert status_for(dpd, charge_off_after_days=180) == status


def test_charge_off_threshold_is_configurable() -> None:
    assert status_for(200, charge_off_after_days=365) == "defaulted"


def test_late_fee_waits_for_the_grace_days() -> None:
    """Charged by the close of the last day of grace, judged on the payments received by it:
    a payment the day after is late."""
    due = date(2026, 1, 31)
    assert late_fee_judged_on(due, grace_days=3) == date(2026, 2, 3)
    assert not late_fee_due(date(2026, 2, 2), due, grace_days=3)  # 2 days late: in grace
    assert late_fee_due(date(2026, 2, 3), due, grace_days=3)
    assert late_fee_due(date(2026, 2, 4), due, grace_days=3)
    assert late_fee_due(due, due, grace_days=0)  # no grace: the due date is the last day
    assert not late_fee_due(date(2026, 1, 30), due, grace_days=0)


def test_fixed_and_percent_fees_with_caps() -> None:
    fixed = LateFeePolicy(grace_days=3, kind="fixed", amount_minor=2500, cap_minor=2000)
    assert late_fee_minor(fixed, 100_000) == 2000
    percent = LateFeePolicy(grace_days=3, kind="percent", percent_ppm=50_000)  # 5 %
    assert late_fee_minor(percent, 53_588) == 2679  # 2679.4 rounds down
    assert late_fee_minor(percent, 53_590) == 2680  # 2679.5 rounds half up
    capped = LateFeePolicy(grace_days=3, kind="percent", percent_ppm=50_000, cap_minor=1000)
    assert late_fee_minor(capped, 53_588) == 1000


@given(
    unpaid=st.lists(st.integers(0, 10_000), min_size=1, max_size=24),
    as_of_offset=st.integers(0, 800),
    tolerance=st.integers(0, 200),
)
def test_days_past_due_properties(unpaid: list[int], as_of_offset: int, tolerance: int) -> None:
    start = date(2026, 1, 31)
    schedule = [
        DueInstallment(n + 1, date.fromordinal(start.toordinal() + 30 * n), amount)
        for n, amount in enumerate(unpaid)
    ]
    as_of = date.fromordinal(start.toordinal() + as_of_offset)
    dpd = days_past_due(as_of, schedule, tolerance)
    assert 0 <= dpd <= as_of_offset
    missed = [i for i in schedule if i.due_date < as_of and i.unpaid_minor > tolerance]
    assert (dpd > 0) == bool(missed)
    # Paying anything down never makes a loan later.
    paid_down = [DueInstallment(i.seq, i.due_date, i.unpaid_minor // 2) for i in schedule]
    assert days_past_due(as_of, paid_down, tolerance) <= dpd


def test_the_spell_past_due_and_the_cure_before_it_come_from_the_history() -> None:
    """Spells join when an installment falls due unpaid while another is still late; a
    payment ends one the day it settles the last late installment."""
    feb, mar, apr = date(2026, 2, 10), date(2026, 3, 10), date(2026, 4, 10)

    def due(seq: int, on: date, unpaid: int = 10_000) -> DueInstallment:
        return DueInstallment(seq, on, unpaid)

    # Feb paid late on Feb 20 (cured), Mar unpaid, Apr unpaid: past due since Mar 11.
    history = [(due(1, feb, 0), date(2026, 2, 20)), (due(2, mar), None), (due(3, apr), None)]
    assert spell_past_due(date(2026, 4, 14), history, 100) == (
        date(2026, 3, 11), date(2026, 2, 20),
    )  # fmt: skip
    # Mar paid on Apr 14, after Apr fell due: one spell from Mar 11 still.
    history[1] = (due(2, mar, 0), date(2026, 4, 14))
    assert spell_past_due(date(2026, 4, 15), history, 100)[0] == date(2026, 3, 11)
    # Mar paid on its due date: never past due in March; the spell is Apr's.
    history[1] = (due(2, mar, 0), mar)
    assert spell_past_due(date(2026, 4, 15), history, 100) == (
        date(2026, 4, 11), date(2026, 2, 20),
    )  # fmt: skip
    # Within the tolerance, an unpaid installment is not missed; current: no spell.
    assert spell_past_due(date(2026, 4, 15), [(due(1, feb, 100), None)], 100) == (None, None)
    # The first spell: no cure before it.
    assert spell_past_due(date(2026, 2, 15), [(due(1, feb), None)], 100) == (
        date(2026, 2, 11), None,
    )  # fmt: skip


def test_a_spell_a_payment_in_time_erased_is_no_longer_in_the_history() -> None:
    """Past due from Feb 11 as the loan was shown; Feb then reported paid on its due date:
    the history has no day past due since Feb 11 (the payment's cure is no cure); paid on
    Feb 20, it has, until Feb 19."""
    feb, mar = date(2026, 2, 10), date(2026, 3, 10)
    since = date(2026, 2, 11)
    in_time = [(DueInstallment(1, feb, 0), feb), (DueInstallment(2, mar, 10_000), None)]
    assert not past_due_since(since, date(2026, 2, 25), in_time, 100)
    late = [(DueInstallment(1, feb, 0), date(2026, 2, 20)), in_time[1]]
    assert past_due_since(since, date(2026, 2, 25), late, 100)
    assert not past_due_since(date(2026, 2, 20), date(2026, 2, 25), late, 100)
    # Mar unpaid past its due date: past due again from Mar 11.
    assert past_due_since(since, date(2026, 3, 12), in_time, 100)
