"""A repayment plan's progress from the promises that carry it: the pure part, as properties."""

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.promises.models import PromiseStatus
from app.promises.rules import PromiseTerms, Receipt, assess_in_order
from app.relief.plans import (
    PlanInstallment,
    PlanStatus,
    PromiseState,
    cumulative,
    installments_of,
    progress,
    terms_of,
)

START = date(2026, 3, 1)


@st.composite
def plans(draw: st.DrawFn) -> list[PlanInstallment]:
    gaps = draw(st.lists(st.integers(1, 40), min_size=1, max_size=24))
    days = [sum(gaps[: n + 1]) for n in range(len(gaps))]
    return [
        PlanInstallment(START + timedelta(days=d), draw(st.integers(1, 100_000_000))) for d in days
    ]


receipts = st.lists(
    st.builds(
        Receipt,
        st.dates(START - timedelta(days=5), START + timedelta(days=1000)),
        st.integers(1, 100_000_000),
    ),
    max_size=12,
)


def carried(plan: list[PlanInstallment], paid: list[Receipt], as_of: date) -> list[PromiseState]:
    """What the service keeps on each installment's promise: assessed for the running total,
    the installments sharing the plan's money."""
    terms = [
        PromiseTerms(total, START, i.due_on)
        for i, total in zip(plan, cumulative(plan), strict=True)
    ]
    (outcomes,) = assess_in_order([terms], paid, as_of)
    states = []
    for outcome in outcomes:
        broken_on = as_of if outcome.status is PromiseStatus.BROKEN else None
        states.append(PromiseState(outcome.status.value, outcome.paid_minor, outcome.kept_on,
                                   broken_on))  # fmt: skip
    return states


@given(plans())
def test_terms_round_trip_through_json(plan: list[PlanInstallment]) -> None:
    assert installments_of(terms_of(plan)) == plan


@given(plans(), receipts, st.integers(0, 1000))
def test_shares_of_the_payments_add_up(
    plan: list[PlanInstallment], paid: list[Receipt], days: int
) -> None:
    as_of = START + timedelta(days=days)
    status, rows = progress(plan, carried(plan, paid, as_of))
    total = sum(i.amount_minor for i in plan)
    for row, installment in zip(rows, plan, strict=True):
        assert 0 <= row.paid_minor <= installment.amount_minor
        assert (row.status == PromiseStatus.KEPT) == (row.kept_on is not None)
    # Each payment pays the first installment still open to it (due on or after the day it
    # came) with room left, up to the plan's total.
    room, counted = [i.amount_minor for i in plan], 0
    for receipt in sorted(paid, key=lambda r: r.received_on):
        if not START <= receipt.received_on <= plan[-1].due_on:
            continue
        left = min(receipt.amount_minor, total - counted)
        counted += left
        for n, installment in enumerate(plan):
            if installment.due_on >= receipt.received_on:
                take = min(room[n], left)
                room[n], left = room[n] - take, left - take
    assert [row.paid_minor for row in rows] == [
        i.amount_minor - r for i, r in zip(plan, room, strict=True)
    ]
    # Kept installment by installment, the whole plan is completed, and then every share full.
    if status is PlanStatus.COMPLETED:
        assert [row.paid_minor for row in rows] == [i.amount_minor for i in plan]
    if any(row.status == PromiseStatus.BROKEN for row in rows):
        assert status is PlanStatus.BROKEN
        assert any(row.due_on < as_of for row in rows)


def test_before_approval_nothing_is_paid() -> None:
    plan = [PlanInstallment(START, 100), PlanInstallment(START + timedelta(days=1), 50)]
    status, rows = progress(plan, None)
    assert status is None
    assert [(r.seq, r.paid_minor, r.status) for r in rows] == [(1, 0, "proposed"),
                                                               (2, 0, "proposed")]  # fmt: skip
