"""When a promise to pay is kept or broken: pure functions, no I/O.

A promise of ``amount`` made on ``promised_on`` and due on ``due_on`` counts the applied payments
received from ``promised_on`` to ``due_on`` (inclusive), but **money counts toward at most one
promise**: the loan's promises take it in the order they were taken, each the earliest money in
its window that no earlier promise counted, up to its amount, and what a payment has left over
goes on to the next. A promise is **kept** on the day the money it counts first adds up to the
amount, and **broken** once a business date after ``due_on`` finds it short.

Promises take money in the order they were taken, not by due date, so that taking a promise
never takes money from one taken before it (a promise already kept stays kept). Breaking a
promise moves no money to another, so the close, which breaks promises without replaying
payments, leaves every other promise as the last payment or reversal assessed it. A broken
promise goes on counting its window's money up to its amount, so a payment received in time
but recorded after the break keeps it; a cancelled one keeps what it had counted, out of the
money recorded before it was cancelled, and a reversal of that money takes it back: it never
counts money recorded after (it took the next payment from a promise taken since).

A repayment plan is one commitment of several promises (its installments, each for the plan's
running total by its date, all made on the approval date): they share the plan's money, which
they take together, the plan's place in the order being its approval.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from app.promises.models import PromiseStatus


@dataclass(frozen=True)
class PromiseTerms:
    amount_minor: int
    promised_on: date
    due_on: date
    # A cancelled promise: the money it had counted, which stays counted toward it, out of
    # the money recorded before it was cancelled; by the day it was cancelled where the
    # instant is not known (cancelled before migration 0040).
    settled_paid_minor: int | None = None
    cancelled_on: date | None = None
    cancelled_at: datetime | None = None


@dataclass(frozen=True)
class Receipt:
    received_on: date
    amount_minor: int
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    status: PromiseStatus
    paid_minor: int
    kept_on: date | None = None


# A promise taken on its own, or a repayment plan's installments in order: what takes money as one.
Commitment = Sequence[PromiseTerms]


def assess(terms: PromiseTerms, receipts: Iterable[Receipt], as_of: date) -> Outcome:
    """A promise's state as of the business date ``as_of``, the loan's only one."""
    ((outcome,),) = assess_in_order([[terms]], receipts, as_of)
    return outcome


def assess_in_order(
    commitments: Sequence[Commitment], receipts: Iterable[Receipt], as_of: date
) -> list[list[Outcome]]:
    """Each promise's state as of the business date ``as_of``, from the loan's applied payments
    in the order received (a day's in the order recorded) and its ``commitments`` in the order
    taken. A settled promise's outcome is what its money would be; the caller keeps its state."""
    ordered = sorted(receipts, key=lambda r: r.received_on)  # stable: a day's stay in order
    uncounted = [r.amount_minor for r in ordered]
    outcomes = []
    for commitment in commitments:
        starts_on = min(p.promised_on for p in commitment)
        counted: list[tuple[date, int]] = []  # (received_on, the running total counted)
        total = 0
        for n, receipt in enumerate(ordered):
            if not uncounted[n] or receipt.received_on < starts_on:
                continue
            # Money received on a day goes only to what is still due by then: a plan broken
            # on its first installment, the rest cancelled having counted nothing, took the
            # next day's payment for its cancelled installment's window, and a promise taken
            # after it counted nothing of it (a tester's).
            wanted = _wanted(commitment, receipt)
            if total >= wanted:
                # A cancelled promise wants nothing of a payment recorded after it, yet may
                # want one received before that but recorded earlier.
                continue
            taken = min(uncounted[n], wanted - total)
            uncounted[n] -= taken
            total += taken
            counted.append((receipt.received_on, total))
        outcomes.append([_outcome(p, counted, as_of) for p in commitment])
    return outcomes


def _wanted(commitment: Commitment, receipt: Receipt) -> int:
    """The running total the commitment's promises due on the receipt's day or later may count
    of it: a cancelled one what it had counted, of money recorded before its cancellation."""
    day = receipt.received_on
    return max((_wants(p, receipt) for p in commitment if p.due_on >= day), default=0)


def _wants(terms: PromiseTerms, receipt: Receipt) -> int:
    if terms.settled_paid_minor is None:
        return terms.amount_minor
    if terms.cancelled_at is not None and receipt.recorded_at is not None:
        after = receipt.recorded_at > terms.cancelled_at
    else:
        after = terms.cancelled_on is not None and receipt.received_on > terms.cancelled_on
    return 0 if after else terms.settled_paid_minor


def _outcome(terms: PromiseTerms, counted: Sequence[tuple[date, int]], as_of: date) -> Outcome:
    """A promise from the money its commitment counted: what came by its due date."""
    paid = 0
    kept_on = None
    for received_on, total in counted:
        if received_on > terms.due_on:
            break
        paid = total
        if kept_on is None and paid >= terms.amount_minor:
            kept_on = received_on
    if kept_on is not None:
        return Outcome(PromiseStatus.KEPT, paid, kept_on)
    if terms.due_on < as_of:
        return Outcome(PromiseStatus.BROKEN, paid)
    return Outcome(PromiseStatus.OPEN, paid)
