"""Promises to pay: taken on an open loan, kept by the payments that follow, broken by the
close of the first business date after their due date without them.

The per-loan path (``refresh_loan``) runs in the transaction of every payment and reversal,
under the loan's lock, and counts the loan's payments toward its promises by ``rules.py``
(money toward one promise at most, the promises in the order taken); the close's step
(``close_promises``) is set-based SQL over a loan-id range that breaks the promises still
short after their date by what that path counted. A break is the event ``promise.broken``
and, through the risk engine that runs after either, the flag ``broken_promise``.
"""

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.config import get_settings
from app.db import execute_counting, utc_now
from app.delinquency import service as delinquency
from app.errors import InvalidRequest
from app.events import service as events
from app.ids import new_id
from app.loans import service as loans_service
from app.loans.errors import LoanNotActive
from app.loans.models import OPEN_STATUSES, Loan
from app.money import format_minor, parse_amount
from app.payments.errors import AmountExceedsPayoff
from app.payments.models import Payment, PaymentStatus
from app.promises.errors import PromiseAlreadyOpen
from app.promises.models import Promise, PromiseStatus
from app.promises.rules import Outcome, PromiseTerms, Receipt, assess_in_order

Counts = dict[str, int]

_promise = cast(Table, Promise.__table__)
_loan = cast(Table, Loan.__table__)


EARLIEST_DUE_ON = "the first date not closed, and not before the disbursement"


async def earliest_due_on(session: AsyncSession, loan: Loan) -> date:
    """The first date a promise, or a plan's installment, may fall due: the day after the
    date closed or being closed, whose close has judged that date's promises already (today
    before any close), and not before the loan's disbursement, which no payment precedes. A
    promise due on a closed date could be kept only by a payment back-dated to it."""
    closed = await delinquency.closing_date(session)
    first_open = closed + timedelta(days=1) if closed else clock.today()
    return max(first_open, loan.disbursed_on)


async def create_promise(
    session: AsyncSession,
    principal: Principal,
    *,
    loan_id: str,
    amount: str,
    due_on: date,
    note: str | None = None,
) -> Promise:
    """Record a promise to pay ``amount`` by ``due_on`` on an open loan of the caller's."""
    principal.require(Role.MERCHANT)
    loan = await loans_service.get_loan(session, principal, loan_id=loan_id, for_update=True)
    if loan.status not in OPEN_STATUSES:
        raise LoanNotActive(f"loan {loan.id} is {loan.status} and takes no promises")
    amount_minor = parse_amount("amount", amount, loan.currency)
    as_of = await delinquency.loan_date(session, loan)
    earliest = await earliest_due_on(session, loan)
    horizon = as_of + timedelta(days=get_settings().promise_max_days)
    if not earliest <= due_on <= horizon:
        raise InvalidRequest.field(
            "due_on", f"must be between {earliest} ({EARLIEST_DUE_ON}) and {horizon}"
        )
    installments = await loans_service.load_installments(session, loan.id)
    payoff = loans_service.payoff_on(installments, as_of)
    if amount_minor > payoff:
        message = (
            f"must not exceed the loan's payoff amount {format_minor(payoff, loan.currency)} "
            f"on {as_of}"
        )
        raise AmountExceedsPayoff.field("amount", message)
    # Under the loan's lock: no concurrent promise on this loan can slip in after the check.
    # (Two may be open later: a reversal can reopen a kept promise beside a newer one.)
    existing = await session.scalar(
        select(Promise.id).where(
            Promise.loan_id == loan.id,
            Promise.status == PromiseStatus.OPEN,
            Promise.restructure_id.is_(None),
        )
    )
    if existing is not None:
        raise PromiseAlreadyOpen(
            f"promise {existing} on loan {loan.id} is still open; it must be kept or broken "
            "before another is taken"
        )
    promise = Promise(
        id=new_id("prom"), loan_id=loan.id, amount_minor=amount_minor, currency=loan.currency,
        paid_minor=0, promised_on=as_of, due_on=due_on, status=PromiseStatus.OPEN, note=note,
        created_by=principal.api_key_id, created_at=utc_now(),
    )  # fmt: skip
    session.add(promise)
    await session.flush()
    # The business date's payments count toward it, as far as no earlier promise counted them
    # (taken last, it takes nothing from those: their states stand).
    outcome = dict(await _assess_loan(session, loan.id, as_of))[promise]
    promise.paid_minor = outcome.paid_minor
    if outcome.status is PromiseStatus.KEPT:
        promise.status, promise.kept_on = PromiseStatus.KEPT, outcome.kept_on
    await session.flush()
    return promise


async def list_promises(
    session: AsyncSession, principal: Principal, *, loan_id: str, page: PageParams
) -> list[Promise]:
    loan = await loans_service.get_loan(session, principal, loan_id=loan_id)
    # A repayment plan's installments are shown with their plan (/restructures).
    query = (
        select(Promise)
        .where(Promise.loan_id == loan.id, Promise.restructure_id.is_(None))
        .order_by(Promise.id)
        .limit(page.limit + 1)
    )
    if page.after_id:
        query = query.where(Promise.id > page.after_id)
    return list(await session.scalars(query))


# -- the per-loan path -------------------------------------------------------------------


async def refresh_loan(session: AsyncSession, loan: Loan, as_of: date) -> None:
    """Re-assess the loan's promises after a payment or reversal (the caller holds the loan's
    lock), counting its payments toward them afresh: a payment keeps one, a reversal may take
    that back. A promise left short reopens, or breaks at once if its date has passed; the
    first installment of a plan that breaks ends its plan. A broken promise that a payment
    received in its window, but recorded after the break, now keeps is mended: kept, and its
    plan runs on."""
    assessed = await _assess_loan(session, loan.id, as_of)
    broken_plans: set[str] = set()
    mended_plans: set[str] = set()
    for promise, outcome in assessed:
        if promise.status == PromiseStatus.CANCELLED:
            # Final: it keeps what it had counted, less what a reversal took back (it kept
            # money that no longer was, and took a later payment from a newer promise, which
            # then broke with the borrower paid: a tester's).
            promise.paid_minor = min(promise.paid_minor, outcome.paid_minor)
            continue
        promise.paid_minor = outcome.paid_minor
        if promise.status == PromiseStatus.BROKEN:
            if outcome.status is PromiseStatus.KEPT:
                promise.status, promise.kept_on = PromiseStatus.KEPT, outcome.kept_on
                promise.broken_on = None
                if promise.restructure_id is not None:
                    mended_plans.add(promise.restructure_id)
            continue  # still short: broken stays broken, a late payment does not mend it
        if promise.restructure_id in broken_plans:
            promise.status, promise.kept_on = PromiseStatus.CANCELLED, None
            promise.cancelled_on, promise.cancelled_at = as_of, utc_now()
        elif outcome.status is PromiseStatus.KEPT:
            promise.status, promise.kept_on = PromiseStatus.KEPT, outcome.kept_on
        elif loan.status not in OPEN_STATUSES:
            # Paid off (or otherwise closed) short of the promise: nothing is owed any more.
            promise.status, promise.kept_on = PromiseStatus.CANCELLED, None
            promise.cancelled_on, promise.cancelled_at = as_of, utc_now()
        elif outcome.status is PromiseStatus.BROKEN:
            # Short after its date: a reversal took back the payment that kept it.
            await _break(session, loan, promise, outcome, as_of)
            if promise.restructure_id is not None:
                broken_plans.add(promise.restructure_id)
        else:
            # Reopened even beside a newer promise taken while it was kept: the older counts
            # the money first, and neither is broken before its date.
            promise.status, promise.kept_on = PromiseStatus.OPEN, None
    await session.flush()
    # A loan paid off since runs the resumed installments' assessment too: the payoff's money
    # keeps them, or they are cancelled as the payoff cancels any open one.
    if mended_plans and _resume(assessed, mended_plans):
        await refresh_loan(session, loan, as_of)  # the resumed installments' own outcomes


def _resume(assessed: Sequence[tuple[Promise, Outcome]], mended_plans: set[str]) -> bool:
    """Reopen the installments the break of a now mended plan cancelled, unless a promise or
    plan was taken on the loan after it, which replaced it; whether any reopened."""
    taken = [promise for promise, _ in assessed]
    resumed = False
    for plan_id in mended_plans:
        installments = [p for p in taken if p.restructure_id == plan_id]
        if any(p.status == PromiseStatus.BROKEN for p in installments):
            continue  # another installment of it is still short
        approved = max((p.created_at, p.id) for p in installments)
        if any((p.created_at, p.id) > approved for p in taken if p.restructure_id != plan_id):
            continue
        for p in installments:
            if p.status == PromiseStatus.CANCELLED:
                # A broken plan has no installment left open for a payoff or a newer plan to
                # cancel: its cancelled installments are the break's.
                p.status, p.cancelled_on, p.cancelled_at = PromiseStatus.OPEN, None, None
                resumed = True
    return resumed


async def _assess_loan(
    session: AsyncSession, loan_id: str, as_of: date
) -> list[tuple[Promise, Outcome]]:
    """Every promise of the loan with its outcome from the loan's applied payments, in the
    order they take money (``rules.assess_in_order``); none when all are cancelled."""
    promises = list(await session.scalars(select(Promise).where(Promise.loan_id == loan_id)))
    if all(p.status == PromiseStatus.CANCELLED and not p.paid_minor for p in promises):
        return []
    commitments = _commitments(promises)
    outcomes = assess_in_order(
        [[_terms(p) for p in commitment] for commitment in commitments],
        await _receipts(session, loan_id),
        as_of,
    )
    return [
        (promise, outcome)
        for commitment, assessed in zip(commitments, outcomes, strict=True)
        for promise, outcome in zip(commitment, assessed, strict=True)
    ]


def _commitments(promises: Sequence[Promise]) -> list[list[Promise]]:
    """The loan's promises in the order they were taken, a plan's installments together (in
    their order) at the place of its approval."""
    plans: dict[str, list[Promise]] = {}
    commitments: list[list[Promise]] = []
    for promise in sorted(promises, key=lambda p: (p.created_at, p.id)):
        if promise.restructure_id is None:
            commitments.append([promise])
        elif promise.restructure_id in plans:
            plans[promise.restructure_id].append(promise)
        else:
            plans[promise.restructure_id] = [promise]
            commitments.append(plans[promise.restructure_id])
    for installments in plans.values():
        installments.sort(key=lambda p: p.plan_seq or 0)
    return commitments


async def _break(
    session: AsyncSession, loan: Loan, promise: Promise, outcome: Outcome, as_of: date
) -> None:
    promise.status, promise.kept_on, promise.broken_on = PromiseStatus.BROKEN, None, as_of
    promise.paid_minor = outcome.paid_minor
    await events.emit(
        session,
        "promise.broken",
        event_data(
            promise_id=promise.id, loan_id=loan.id, borrower_id=loan.borrower_id,
            merchant_id=loan.merchant_id, currency=promise.currency,
            amount_minor=promise.amount_minor, paid_minor=promise.paid_minor,
            promised_on=promise.promised_on, due_on=promise.due_on, broken_on=as_of,
            restructure_id=promise.restructure_id, plan_seq=promise.plan_seq,
        ),
        loan=loan,
    )  # fmt: skip


def _terms(promise: Promise) -> PromiseTerms:
    # A broken promise still counts its window's money up to its amount: a payment received
    # in time but recorded after the break keeps it.
    settled = promise.status == PromiseStatus.CANCELLED
    return PromiseTerms(
        promise.amount_minor, promise.promised_on, promise.due_on,
        settled_paid_minor=promise.paid_minor if settled else None,
        cancelled_on=promise.cancelled_on if settled else None,
        cancelled_at=promise.cancelled_at if settled else None,
    )  # fmt: skip


async def _receipts(session: AsyncSession, loan_id: str) -> list[Receipt]:
    rows = await session.execute(
        select(Payment.received_on, Payment.amount_minor, Payment.created_at)
        .where(Payment.loan_id == loan_id, Payment.status == PaymentStatus.APPLIED)
        # A day's payments in the order recorded (ids sort by creation), as the loan's replay.
        .order_by(Payment.received_on, Payment.id)
    )
    return [Receipt(*row) for row in rows]


def event_data(
    *,
    promise_id: str,
    loan_id: str,
    borrower_id: str,
    merchant_id: str,
    currency: str,
    amount_minor: int,
    paid_minor: int,
    promised_on: date,
    due_on: date,
    broken_on: date,
    restructure_id: str | None,
    plan_seq: int | None,
) -> dict[str, Any]:
    """What ``promise.broken`` carries, from either path. For a repayment plan's installment
    ``amount`` is what the plan asked in total by ``due_on``; ``restructure_id`` and
    ``plan_installment`` name the plan and the installment (null for a promise)."""
    return {
        "promise_id": promise_id,
        "restructure_id": restructure_id,
        "plan_installment": plan_seq,
        "loan_id": loan_id,
        "borrower_id": borrower_id,
        "merchant_id": merchant_id,
        "currency": currency,
        "amount": format_minor(amount_minor, currency),
        "paid": format_minor(paid_minor, currency),
        "shortfall": format_minor(amount_minor - paid_minor, currency),
        "promised_on": promised_on.isoformat(),
        "due_on": due_on.isoformat(),
        "broken_on": broken_on.isoformat(),
    }


# -- the set-based step of the close -----------------------------------------------------


async def close_promises(
    session: AsyncSession, as_of: date, low: str | None, high: str | None
) -> Counts:
    """Break every open promise of the range's open loans whose due date is before ``as_of``,
    and with a plan's installment the rest of its plan; cancel the open promises of loans that
    closed (cancelled, paid off). A broken promise is never broken again: reruns emit nothing.

    What a promise has counted is the stored ``paid_minor``: every payment and reversal
    re-assesses its loan's promises under the loan's lock (``refresh_loan``), which is where
    money is counted toward one promise at most, and breaking or cancelling one moves no
    money to another. An open promise is short (a promise that adds up is kept at once)."""
    pr, loan = _promise.c, _loan.c
    loans_in_range = select(loan.id).where(delinquency.in_range(loan.id, low, high))
    cancelled = await execute_counting(
        session,
        update(_promise)
        .where(
            pr.status == PromiseStatus.OPEN.value,
            delinquency.in_range(pr.loan_id, low, high),
            pr.loan_id.in_(loans_in_range.where(loan.status.not_in(OPEN_STATUSES))),
        )
        .values(status=PromiseStatus.CANCELLED.value, cancelled_on=as_of, cancelled_at=utc_now()),
    )
    broken = (
        await session.execute(
            update(_promise)
            .where(
                pr.status == PromiseStatus.OPEN.value,
                pr.due_on < as_of,
                delinquency.in_range(pr.loan_id, low, high),
                pr.loan_id.in_(loans_in_range.where(loan.status.in_(OPEN_STATUSES))),
                pr.paid_minor < pr.amount_minor,
            )
            .values(status=PromiseStatus.BROKEN.value, broken_on=as_of)
            .returning(
                pr.id, pr.loan_id, pr.currency, pr.amount_minor, pr.paid_minor, pr.promised_on,
                pr.due_on, pr.restructure_id, pr.plan_seq,
            )
        )
    ).all()  # fmt: skip
    # A plan ends with its first broken installment (the close runs every date, so no later
    # installment of it can have fallen due yet).
    broken_plans = sorted({b.restructure_id for b in broken if b.restructure_id is not None})
    if broken_plans:
        cancelled += await execute_counting(
            session,
            update(_promise)
            .where(pr.restructure_id.in_(broken_plans), pr.status == PromiseStatus.OPEN.value)
            .values(
                status=PromiseStatus.CANCELLED.value, cancelled_on=as_of, cancelled_at=utc_now()
            ),
        )
    if broken:
        owners = {
            row.id: row
            for row in await session.execute(
                select(loan.id, loan.borrower_id, loan.merchant_id).where(
                    loan.id.in_(sorted({b.loan_id for b in broken}))
                )
            )
        }
        emitted = []
        for b in sorted(broken, key=lambda b: b.id):
            owner = owners[b.loan_id]
            data = event_data(
                promise_id=b.id, loan_id=b.loan_id, borrower_id=owner.borrower_id,
                merchant_id=owner.merchant_id, currency=b.currency, amount_minor=b.amount_minor,
                paid_minor=b.paid_minor, promised_on=b.promised_on, due_on=b.due_on,
                broken_on=as_of, restructure_id=b.restructure_id, plan_seq=b.plan_seq,
            )  # fmt: skip
            emitted.append({"type": "promise.broken", "loan_id": b.loan_id, "data": data})
        await events.emit_many(session, emitted)
    return {"promises_broken": len(broken), "promises_cancelled": cancelled}
