"""When a promise is kept or broken, from the payments in its window: the pure rules."""

from datetime import date

from app.promises.models import PromiseStatus
from app.promises.rules import Outcome, PromiseTerms, Receipt, assess

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
