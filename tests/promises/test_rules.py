"""When a promise is kept or broken, from the payments in its window that no earlier promise
counted: the pure rules."""

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.promises.models import PromiseStatus
from app.promises.rules import Outcome, PromiseTerms, Receipt, assess, assess_in_order

TERMS = PromiseTerms(amount_minor=41200, promised_on=date(2026, 2, 15), due_on=date(2026, 2, 20))


def test_payments_in_the_window_keep_it_on_the_day_they_add_up() -> None:
    receipts = [Receipt(date(2026, 2, 19), 21200), Receipt(date(2026, 2, 16), 20000)]
    assert assess(TERMS, receipts, date(2026, 2, 25)) == Outcome(
        PromiseStatus.KEPT, 41200, date(2026, 2, 19)
    )


def test_both_ends_of_the_window_count() -> None:
    receipts = [Receipt(date(2026, 2, 15), 20000), Receipt(date(2026, 2, 20), 21200)]
    assert assess(TERMS, receipts, date(2026, 2, 21)).status is PromiseStatus.KEPT


def test_payments_outside_the_window_do_not_count() -> None:
    receipts = [Receipt(date(2026, 2, 14), 41200), Receipt(date(2026, 2, 21), 41200)]
    assert assess(TERMS, receipts, date(2026, 2, 22)) == Outcome(PromiseStatus.BROKEN, 0)


def test_short_by_one_minor_unit_is_broken_only_after_the_due_date() -> None:
    receipts = [Receipt(date(2026, 2, 16), 41199)]
    assert assess(TERMS, receipts, date(2026, 2, 20)) == Outcome(PromiseStatus.OPEN, 41199)
    assert assess(TERMS, receipts, date(2026, 2, 21)) == Outcome(PromiseStatus.BROKEN, 41199)


# -- money counts toward one promise at most ----------------------------------------------------

NOV = date(2026, 11, 3)
FIRST = PromiseTerms(10000, NOV, date(2026, 11, 10))
SECOND = PromiseTerms(10000, NOV, date(2026, 11, 25))


def test_a_payment_counts_toward_the_promise_taken_first() -> None:
    receipts = [Receipt(NOV, 10000)]
    assert assess_in_order([[FIRST], [SECOND]], receipts, NOV) == [
        [Outcome(PromiseStatus.KEPT, 10000, NOV)],
        [Outcome(PromiseStatus.OPEN, 0)],
    ]


def test_what_a_payment_leaves_over_goes_to_the_next() -> None:
    receipts = [Receipt(NOV, 13000), Receipt(date(2026, 11, 12), 7000)]
    assert assess_in_order([[FIRST], [SECOND]], receipts, NOV) == [
        [Outcome(PromiseStatus.KEPT, 10000, NOV)],
        [Outcome(PromiseStatus.KEPT, 10000, date(2026, 11, 12))],
    ]


def test_the_older_promise_counts_first_whatever_the_dates() -> None:
    # Taken later but due sooner: it gets what the older one does not need.
    sooner = PromiseTerms(10000, NOV, date(2026, 11, 8))
    receipts = [Receipt(date(2026, 11, 5), 10000)]
    assert assess_in_order([[SECOND], [sooner]], receipts, date(2026, 11, 9)) == [
        [Outcome(PromiseStatus.KEPT, 10000, date(2026, 11, 5))],
        [Outcome(PromiseStatus.BROKEN, 0)],
    ]


def test_a_cancelled_promise_keeps_what_it_counted() -> None:
    cancelled = PromiseTerms(10000, NOV, date(2026, 11, 10), settled_paid_minor=4000)
    receipts = [Receipt(date(2026, 11, 5), 4000), Receipt(date(2026, 11, 6), 3000)]
    (_,), (second,) = assess_in_order([[cancelled], [SECOND]], receipts, date(2026, 11, 12))
    assert second == Outcome(PromiseStatus.OPEN, 3000)


def test_a_cancelled_promise_counts_no_money_received_after_it_was_cancelled() -> None:
    """Cancelled with 40.00 counted, whose payment was then reversed: the next payment was
    its own again, and a promise taken since broke with the borrower paid (a tester's)."""
    cancelled = PromiseTerms(10000, NOV, date(2026, 11, 10), settled_paid_minor=4000,
                             cancelled_on=date(2026, 11, 5))  # fmt: skip
    receipts = [Receipt(date(2026, 11, 6), 4000)]  # the one it counted, reversed, is gone
    (lost,), (second,) = assess_in_order([[cancelled], [SECOND]], receipts, date(2026, 11, 12))
    assert lost.paid_minor == 0
    assert second == Outcome(PromiseStatus.OPEN, 4000)


def test_a_cancelled_promise_counts_only_money_recorded_before_it_was_cancelled() -> None:
    """Cut by the instant, not the day: a payment received on the cancellation's day but
    recorded after is the next promise's, and a back-dated one recorded after does not stop
    the cancelled promise counting one recorded before it."""
    cancelled_at = datetime(2026, 11, 5, 12, tzinfo=UTC)
    cancelled = PromiseTerms(10000, NOV, date(2026, 11, 10), settled_paid_minor=4000,
                             cancelled_on=date(2026, 11, 5), cancelled_at=cancelled_at)  # fmt: skip
    before, after = cancelled_at - timedelta(hours=1), cancelled_at + timedelta(hours=1)
    receipts = [
        Receipt(date(2026, 11, 4), 1000, after),  # back-dated, recorded after
        Receipt(date(2026, 11, 5), 2500, before),  # what is left of what it had counted
        Receipt(date(2026, 11, 5), 3000, after),  # the same day, recorded after
    ]
    (kept,), (second,) = assess_in_order([[cancelled], [SECOND]], receipts, date(2026, 11, 12))
    assert kept.paid_minor == 2500
    assert second == Outcome(PromiseStatus.OPEN, 4000)


def test_a_broken_plans_cancelled_rest_takes_no_money_after_the_break() -> None:
    """Broken on its first installment, the rest cancelled having counted nothing: the next
    day's payment was the plan's, for the cancelled installment's window, and a promise taken
    after it counted nothing (a tester's)."""
    plan = [PromiseTerms(20000, NOV, date(2026, 11, 15)),
            PromiseTerms(40000, NOV, date(2026, 11, 25), settled_paid_minor=0)]  # fmt: skip
    later = PromiseTerms(5000, date(2026, 11, 16), date(2026, 11, 25))
    receipts = [Receipt(date(2026, 11, 16), 20000)]
    (broken, _), (promise,) = assess_in_order([plan, [later]], receipts, date(2026, 11, 16))
    assert broken == Outcome(PromiseStatus.BROKEN, 0)
    assert promise == Outcome(PromiseStatus.KEPT, 5000, date(2026, 11, 16))


def test_a_plans_installments_share_its_money() -> None:
    plan = [PromiseTerms(20000, NOV, date(2026, 11, 20)),
            PromiseTerms(41200, NOV, date(2026, 12, 5))]  # fmt: skip
    receipts = [Receipt(date(2026, 11, 4), 45000), Receipt(date(2026, 11, 30), 5000)]
    assert assess_in_order([plan, [SECOND]], receipts, date(2026, 11, 21)) == [
        [Outcome(PromiseStatus.KEPT, 41200, date(2026, 11, 4)),
         Outcome(PromiseStatus.KEPT, 41200, date(2026, 11, 4))],
        [Outcome(PromiseStatus.OPEN, 3800)],  # what the plan's total left
    ]  # fmt: skip


commitments = st.lists(
    st.builds(
        lambda start, days, amount: [PromiseTerms(amount, start, start + timedelta(days=days))],
        st.dates(NOV, NOV + timedelta(days=30)),
        st.integers(0, 40),
        st.integers(1, 50_000),
    ),
    min_size=1,
    max_size=5,
)
receipts = st.lists(
    st.builds(
        Receipt, st.dates(NOV - timedelta(days=3), NOV + timedelta(days=80)), st.integers(1, 30_000)
    ),
    max_size=10,
)


@given(commitments, receipts, st.integers(0, 80))
def test_no_money_counts_twice(
    taken: list[list[PromiseTerms]], paid: list[Receipt], days: int
) -> None:
    outcomes = assess_in_order(taken, paid, NOV + timedelta(days=days))
    counted = sum(o.paid_minor for (o,) in outcomes)
    assert counted <= sum(r.amount_minor for r in paid)
    for (terms,), (outcome,) in zip(taken, outcomes, strict=True):
        in_window = sum(r.amount_minor for r in paid
                        if terms.promised_on <= r.received_on <= terms.due_on)  # fmt: skip
        assert outcome.paid_minor <= min(terms.amount_minor, in_window)
        assert (outcome.status is PromiseStatus.KEPT) == (outcome.paid_minor == terms.amount_minor)


@given(commitments, receipts, st.integers(0, 80))
def test_taking_a_promise_changes_none_taken_before(
    taken: list[list[PromiseTerms]], paid: list[Receipt], days: int
) -> None:
    as_of = NOV + timedelta(days=days)
    assert assess_in_order(taken, paid, as_of)[:-1] == assess_in_order(taken[:-1], paid, as_of)
