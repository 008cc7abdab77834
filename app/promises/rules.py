"""When a promise to pay is kept or broken: pure functions, no I/O.

A promise of ``amount`` made on ``promised_on`` and due on ``due_on`` is **kept** on the day the
applied payments received from ``promised_on`` to ``due_on`` (inclusive) first add up to the
amount, and **broken** once a business date after ``due_on`` finds them short. The close's
set-based step (``service.close_promises``) applies the same windows in SQL.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from app.promises.models import PromiseStatus


@dataclass(frozen=True)
class PromiseTerms:
    amount_minor: int
    promised_on: date
    due_on: date


@dataclass(frozen=True)
class Receipt:
    received_on: date
    amount_minor: int


@dataclass(frozen=True)
class Outcome:
    status: PromiseStatus
    paid_minor: int
    kept_on: date | None = None


def counts_toward(terms: PromiseTerms, receipt: Receipt) -> bool:
    return terms.promised_on <= receipt.received_on <= terms.due_on


def assess(terms: PromiseTerms, receipts: Iterable[Receipt], as_of: date) -> Outcome:
    """The promise's state as of the business date ``as_of``, from the loan's applied payments."""
    paid = 0
    kept_on = None
    for receipt in sorted(
        (r for r in receipts if counts_toward(terms, r)), key=lambda r: r.received_on
    ):
        paid += receipt.amount_minor
        if kept_on is None and paid >= terms.amount_minor:
            kept_on = receipt.received_on
    if kept_on is not None:
        return Outcome(PromiseStatus.KEPT, paid, kept_on)
    if terms.due_on < as_of:
        return Outcome(PromiseStatus.BROKEN, paid)
    return Outcome(PromiseStatus.OPEN, paid)
