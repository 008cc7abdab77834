"""Relief on a loan: a restructure is requested (by the loan's merchant or an admin) and then
approved or rejected by an admin.

An approved repayment plan becomes a series of promises (``app/promises``), so the payments
that keep it, the close that breaks it, ``promise.broken`` and the ``broken_promise`` flag are
the promises' own. An approved fee waiver is a ``fee_waiver`` ledger row that the loan's replay
applies; a payment holiday moves the installments still ahead and a term extension
re-amortises them over more months, and both replay the payments (``app/payments``).
"""

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.config import get_settings
from app.db import utc_now
from app.delinquency import service as delinquency
from app.errors import InvalidRequest
from app.events import service as events
from app.ids import new_id
from app.loans import service as loans_service
from app.loans.errors import LoanNotActive, LoanNotFound
from app.loans.models import OPEN_STATUSES, Loan
from app.loans.schedule import MAX_TERM, InstallmentsDoNotFit
from app.money import format_minor, parse_amount
from app.payments import service as payments
from app.payments.allocation import fees_to_waive
from app.payments.errors import AmountExceedsPayoff
from app.promises import service as promises
from app.promises.models import Promise, PromiseStatus
from app.relief.errors import (
    ExtensionDoesNotFit,
    HolidaysTooLong,
    NoFeesToWaive,
    NothingToDefer,
    PlanExceedsPayoff,
    RestructureExpired,
    RestructureNotFound,
    RestructureNotPending,
    TermTooLong,
)
from app.relief.models import Restructure, RestructureKind, RestructureStatus
from app.relief.plans import PlanInstallment, cumulative, installments_of, terms_of
from app.relief.schemas import MAX_HOLIDAY_MONTHS, MAX_HOLIDAY_MONTHS_PER_LOAN
from app.risk import service as risk


async def request_restructure(
    session: AsyncSession,
    principal: Principal,
    *,
    loan_id: str,
    kind: RestructureKind,
    reason: str,
    installments: Sequence[tuple[date, str]] | None,
    amount: str | None,
    months: int | None,
) -> Restructure:
    """A pending request; nothing about the loan changes until an admin approves it. Each
    kind takes its own field (``schemas.FIELD_OF_KIND``: the others' are refused with the
    body's shape)."""
    principal.require(Role.MERCHANT)
    loan = await loans_service.get_loan(session, principal, loan_id=loan_id, for_update=True)
    if loan.status not in OPEN_STATUSES:
        raise LoanNotActive(f"loan {loan.id} is {loan.status} and takes no restructures")
    as_of = await delinquency.loan_date(session, loan)
    terms: dict[str, Any]
    if kind is RestructureKind.REPAYMENT_PLAN:
        plan = _parse_plan(installments or [], loan.currency)
        _check_dates(plan, await promises.earliest_due_on(session, loan), as_of)
        await _check_total(session, loan, plan, as_of)
        terms = terms_of(plan)
    elif kind is RestructureKind.FEE_WAIVER:
        terms = {"amount_minor": await _waiver_amount(session, loan, amount, as_of)}
    elif kind is RestructureKind.PAYMENT_HOLIDAY:
        if months is None:
            raise InvalidRequest.field("months", "a payment_holiday needs its months")
        if months > MAX_HOLIDAY_MONTHS:
            raise InvalidRequest.field("months", f"a payment_holiday is {MAX_HOLIDAY_MONTHS} "
                                       "months at most")  # fmt: skip
        if (taken := await _holiday_months(session, loan)) + months > MAX_HOLIDAY_MONTHS_PER_LOAN:
            raise InvalidRequest.field("months", _holidays_beyond(taken, months))
        await _check_something_ahead(session, loan, as_of)
        terms = {"months": months, "moved": None}
    else:
        if months is None:
            raise InvalidRequest.field("months", "a term_extension needs its months")
        if loan.term + months > MAX_TERM:
            raise InvalidRequest.field("months", f"the term would be {loan.term + months} "
                                       f"months, beyond {MAX_TERM}")  # fmt: skip
        await _check_something_ahead(session, loan, as_of)
        terms = {"months": months}
    restructure = Restructure(
        id=new_id("rst"), loan_id=loan.id, kind=kind, status=RestructureStatus.PENDING,
        currency=loan.currency, terms=terms, reason=reason, requested_by=principal.api_key_id,
        requested_on=as_of, requested_at=utc_now(),
    )  # fmt: skip
    session.add(restructure)
    await session.flush()
    return restructure


async def _holiday_months(session: AsyncSession, loan: Loan) -> int:
    """The months of the loan's payment holidays approved so far."""
    terms = await session.scalars(
        select(Restructure.terms).where(
            Restructure.loan_id == loan.id,
            Restructure.kind == RestructureKind.PAYMENT_HOLIDAY,
            Restructure.status == RestructureStatus.APPROVED,
        )
    )
    return sum(int(t["months"]) for t in terms)


def _holidays_beyond(taken: int, months: int) -> str:
    return (
        f"{months} more months of payment holiday would come to {taken + months}, beyond the "
        f"{MAX_HOLIDAY_MONTHS_PER_LOAN} a loan may have ({taken} approved)"
    )


async def approve(
    session: AsyncSession,
    principal: Principal,
    *,
    restructure_id: str,
    loan_id: str | None,
    note: str | None,
) -> Restructure:
    """Put a pending restructure into force on the business date (the loan's flags are
    re-evaluated in the same transaction): a plan's installments become promises, a fee
    waiver forgives the fees due, a payment holiday moves the installments still ahead and a
    term extension re-amortises them over more months."""
    principal.require()
    restructure, loan = await _pending(session, principal, restructure_id, loan_id)
    if loan.status not in OPEN_STATUSES:
        raise LoanNotActive(f"loan {loan.id} is {loan.status}; restructure cannot be approved")
    as_of = await delinquency.loan_date(session, loan, reckoning=True)
    # Decided as of the business date, the loan reckoned as a payment would: after today's
    # payment, as of today still, not taken back a day.
    reckon_on = max(as_of, await delinquency.change_date(session, loan))
    if restructure.kind == RestructureKind.REPAYMENT_PLAN:
        await _start_plan(session, principal, restructure, loan, as_of, reckon_on)
    elif restructure.kind == RestructureKind.TERM_EXTENSION:
        months = restructure.terms["months"]
        if loan.term + months > MAX_TERM:  # another extension came first
            raise TermTooLong(f"loan {loan.id}: the term would be {loan.term + months} months, "
                              f"beyond {MAX_TERM}")  # fmt: skip
        await _cancel_promises_to_pay(session, loan, as_of)
        try:
            extension = await payments.extend_term(
                session, loan, months=months, as_of=as_of, reckon_on=reckon_on
            )
        except InstallmentsDoNotFit:
            raise ExtensionDoesNotFit(
                f"loan {loan.id}: what is left does not spread over {months} more months: an "
                "installment would ask nothing, or in the product's installment multiple "
                "repay it before the last or leave the last larger than the one before; "
                "extend by fewer months"
            ) from None
        if extension is None:
            raise NothingToDefer(f"loan {loan.id} has no installment due after {as_of} left to pay")
        restructure.terms = {
            **restructure.terms, "term_was": extension.term_was, "term": loan.term,
            "installment_was_minor": extension.installment_was,
            "installment_minor": extension.installment,
        }  # fmt: skip
    elif restructure.kind == RestructureKind.PAYMENT_HOLIDAY:
        months = restructure.terms["months"]
        taken = await _holiday_months(session, loan)
        if taken + months > MAX_HOLIDAY_MONTHS_PER_LOAN:  # another holiday came first
            raise HolidaysTooLong(f"loan {loan.id}: {_holidays_beyond(taken, months)}")
        await _cancel_promises_to_pay(session, loan, as_of)
        moved = await payments.defer_installments(
            session, loan, months=months, as_of=as_of, reckon_on=reckon_on
        )
        if not moved:
            raise NothingToDefer(f"loan {loan.id} has no installment due after {as_of} left to pay")
        restructure.terms = {
            **restructure.terms,
            "moved": [
                {"seq": seq, "due_date_was": was.isoformat(), "due_date": now.isoformat()}
                for seq, was, now in moved
            ],
        }
    else:
        waived = await payments.waive_fees(
            session, loan, cap_minor=restructure.terms["amount_minor"],
            note=f"restructure {restructure.id}", as_of=as_of, reckon_on=reckon_on,
        )  # fmt: skip
        if waived == 0:
            raise NoFeesToWaive(f"loan {loan.id} has no fees due on {as_of}")
        restructure.terms = {**restructure.terms, "waived_minor": waived}
    restructure.status = RestructureStatus.APPROVED
    restructure.decided_by, restructure.decided_on, restructure.decided_at = (
        principal.api_key_id, as_of, utc_now(),
    )  # fmt: skip
    restructure.decision_note = note
    await session.flush()
    await events.emit(session, "restructure.approved", approved_event(restructure, loan), loan=loan)
    return restructure


async def _cancel_promises_to_pay(session: AsyncSession, loan: Loan, as_of: date) -> None:
    """A payment holiday or a term extension is a new agreement on what is paid when: the open
    promises to pay, made under the old dates, are cancelled (each keeps what it counted), as
    a plan replaces them. Kept open, a promise for an installment the holiday moved broke on
    its date with nothing due, and announced it (a tester's). A running plan's installments
    stay: the plan is an agreement of its own."""
    await session.execute(
        update(Promise)
        .where(
            Promise.loan_id == loan.id,
            Promise.status == PromiseStatus.OPEN,
            Promise.restructure_id.is_(None),
        )
        .values(status=PromiseStatus.CANCELLED, cancelled_on=as_of, cancelled_at=utc_now())
    )


async def _start_plan(
    session: AsyncSession,
    principal: Principal,
    restructure: Restructure,
    loan: Loan,
    as_of: date,
    reckon_on: date,
) -> None:
    """The plan's installments become promises from ``as_of``, the loan's promises and flags
    reckoned as of ``reckon_on``; today's payments count already. The plan replaces every open
    commitment on the loan: a plan still running (its open installments) and the open
    promises to pay are cancelled, and release what they had counted to it. Kept, a promise
    taken before would claim the money that meets the plan, which would break on its first
    date although the borrower paid."""
    plan = installments_of(restructure.terms)
    earliest = await promises.earliest_due_on(session, loan)
    if plan[0].due_on < earliest:
        raise RestructureExpired(
            f"restructure {restructure.id}: its first installment was due {plan[0].due_on}, "
            f"before {earliest} ({promises.EARLIEST_DUE_ON}); request a plan with dates "
            "still ahead"
        )
    total, payoff = await _total_and_payoff(session, loan, plan, as_of)
    if total > payoff:
        # The loan was paid down since the request: a conflict with its state, not bad input.
        raise PlanExceedsPayoff(
            f"restructure {restructure.id}: its installments add up to "
            f"{format_minor(total, loan.currency)}, more than the loan's payoff amount "
            f"{format_minor(payoff, loan.currency)} on {as_of}; request a plan within it"
        )
    await session.execute(
        update(Promise)
        .where(Promise.loan_id == loan.id, Promise.status == PromiseStatus.OPEN)
        # What they had counted is the plan's to count (a re-verifier's: a promise cancelled
        # with 250.00 counted kept it from the plan, whose first installment it would meet).
        .values(
            status=PromiseStatus.CANCELLED, cancelled_on=as_of, cancelled_at=utc_now(), paid_minor=0
        )
    )
    now = utc_now()
    session.add_all(
        Promise(
            id=new_id("prom"),
            loan_id=loan.id,
            amount_minor=total,
            currency=loan.currency,
            paid_minor=0,
            promised_on=as_of,
            due_on=installment.due_on,
            status=PromiseStatus.OPEN,
            note=f"repayment plan {restructure.id}",
            created_by=principal.api_key_id,
            created_at=now,
            restructure_id=restructure.id,
            plan_seq=seq,
        )
        for seq, (installment, total) in enumerate(zip(plan, cumulative(plan), strict=True), 1)
    )
    await session.flush()
    await promises.refresh_loan(session, loan, reckon_on)
    # partial_payments rests while the plan runs. (A waiver or a holiday replays the loan,
    # which re-evaluates it.)
    await risk.refresh_loan(session, loan, reckon_on)


async def _check_something_ahead(session: AsyncSession, loan: Loan, as_of: date) -> None:
    installments = await loans_service.load_installments(session, loan.id)
    if all(i.due_date <= as_of for i in installments):
        raise NothingToDefer(f"loan {loan.id} has no installment due after {as_of}")


async def _waiver_amount(
    session: AsyncSession, loan: Loan, amount: str | None, as_of: date
) -> int | None:
    """A fee waiver's cap (None: every fee due when it is approved), checked against the fees
    due on ``as_of``."""
    # A malformed amount is told so whatever the loan owes (422 before the loan's 409).
    amount_minor = None if amount is None else parse_amount("amount", amount, loan.currency)
    installments = await loans_service.load_installments(session, loan.id)
    due = sum(fees_to_waive(loans_service.position_of(installments), as_of, None).values())
    if due == 0:
        raise NoFeesToWaive(f"loan {loan.id} has no fees due on {as_of}")
    if amount_minor is None:
        return None
    if amount_minor > due:
        raise InvalidRequest.field(
            "amount", f"must not exceed the fees due on {as_of}: {format_minor(due, loan.currency)}"
        )
    return amount_minor


async def reject(
    session: AsyncSession,
    principal: Principal,
    *,
    restructure_id: str,
    loan_id: str | None,
    note: str | None,
) -> Restructure:
    principal.require()
    restructure, loan = await _pending(session, principal, restructure_id, loan_id)
    restructure.status = RestructureStatus.REJECTED
    restructure.decided_by, restructure.decided_at = principal.api_key_id, utc_now()
    restructure.decided_on = await delinquency.loan_date(session, loan)
    restructure.decision_note = note
    await session.flush()
    return restructure


async def get_restructure(
    session: AsyncSession, principal: Principal, *, restructure_id: str, loan_id: str | None
) -> Restructure:
    restructure = await session.get(Restructure, restructure_id)
    if restructure is None or (loan_id is not None and restructure.loan_id != loan_id):
        raise RestructureNotFound(f"restructure {restructure_id} does not exist")
    try:
        await loans_service.get_loan(session, principal, loan_id=restructure.loan_id)
    except LoanNotFound:  # another merchant's loan: its restructures do not exist either
        raise RestructureNotFound(f"restructure {restructure_id} does not exist") from None
    return restructure


async def list_restructures(
    session: AsyncSession, principal: Principal, *, loan_id: str, page: PageParams
) -> list[Restructure]:
    loan = await loans_service.get_loan(session, principal, loan_id=loan_id)
    query = (
        select(Restructure)
        .where(Restructure.loan_id == loan.id)
        .order_by(Restructure.id)
        .limit(page.limit + 1)
    )
    if page.after_id:
        query = query.where(Restructure.id > page.after_id)
    return list(await session.scalars(query))


async def plan_promises(
    session: AsyncSession, restructure_ids: Sequence[str]
) -> dict[str, list[Promise]]:
    """The promises carrying each approved plan, in installment order."""
    carried: dict[str, list[Promise]] = defaultdict(list)
    if restructure_ids:
        for promise in await session.scalars(
            select(Promise)
            .where(Promise.restructure_id.in_(restructure_ids))
            .order_by(Promise.restructure_id, Promise.plan_seq)
        ):
            carried[str(promise.restructure_id)].append(promise)
    return carried


def approved_event(restructure: Restructure, loan: Loan) -> dict[str, Any]:
    currency = restructure.currency
    data: dict[str, Any] = {
        "restructure_id": restructure.id,
        "kind": restructure.kind,
        "loan_id": loan.id,
        "borrower_id": loan.borrower_id,
        "merchant_id": loan.merchant_id,
        "currency": currency,
        "reason": restructure.reason,
        "approved_on": str(restructure.decided_on),
    }
    if restructure.kind == RestructureKind.FEE_WAIVER:
        return {**data, "waived": format_minor(restructure.terms["waived_minor"], currency)}
    if restructure.kind == RestructureKind.PAYMENT_HOLIDAY:
        return {**data, "months": restructure.terms["months"], "moved": restructure.terms["moved"]}
    if restructure.kind == RestructureKind.TERM_EXTENSION:
        terms = restructure.terms
        return {
            **data, "months": terms["months"], "term_was": terms["term_was"],
            "term": terms["term"],
            "installment_was": format_minor(terms["installment_was_minor"], currency),
            "installment": format_minor(terms["installment_minor"], currency),
        }  # fmt: skip
    plan = installments_of(restructure.terms)
    return {
        **data,
        "installments": [
            {
                "seq": n,
                "due_on": i.due_on.isoformat(),
                "amount": format_minor(i.amount_minor, currency),
            }
            for n, i in enumerate(plan, start=1)
        ],
        "total": format_minor(sum(i.amount_minor for i in plan), currency),
    }


async def _pending(
    session: AsyncSession, principal: Principal, restructure_id: str, loan_id: str | None
) -> tuple[Restructure, Loan]:
    """The restructure, under its loan's lock (taken first, as every write to a loan does)."""
    found = await get_restructure(
        session, principal, restructure_id=restructure_id, loan_id=loan_id
    )
    loan = await loans_service.get_loan(session, principal, loan_id=found.loan_id, for_update=True)
    await session.refresh(found, with_for_update=True)
    if found.status != RestructureStatus.PENDING:
        raise RestructureNotPending(
            f"restructure {found.id} was {found.status} on {found.decided_on}"
        )
    return found, loan


def _parse_plan(installments: Sequence[tuple[date, str]], currency: str) -> list[PlanInstallment]:
    if not installments:
        raise InvalidRequest.field("installments", "a repayment_plan needs its installments")
    return [
        PlanInstallment(due_on, parse_amount(f"installments.{n}.amount", amount, currency))
        for n, (due_on, amount) in enumerate(installments)
    ]


def _check_dates(plan: Sequence[PlanInstallment], earliest: date, as_of: date) -> None:
    horizon = as_of + timedelta(days=get_settings().repayment_plan_max_days)
    for n, installment in enumerate(plan):
        field = f"installments.{n}.due_on"
        if n and installment.due_on <= plan[n - 1].due_on:
            raise InvalidRequest.field(field, "must be after the previous installment's")
        if not earliest <= installment.due_on <= horizon:
            raise InvalidRequest.field(
                field, f"must be between {earliest} ({promises.EARLIEST_DUE_ON}) and {horizon}"
            )


async def _total_and_payoff(
    session: AsyncSession, loan: Loan, plan: Sequence[PlanInstallment], as_of: date
) -> tuple[int, int]:
    """What the plan asks in all, and what the loan would take to pay off on ``as_of``."""
    installments = await loans_service.load_installments(session, loan.id)
    return sum(i.amount_minor for i in plan), loans_service.payoff_on(installments, as_of)


async def _check_total(
    session: AsyncSession, loan: Loan, plan: Sequence[PlanInstallment], as_of: date
) -> None:
    """A plan asks for no more than the loan would take to pay off today."""
    total, payoff = await _total_and_payoff(session, loan, plan, as_of)
    if total > payoff:
        message = (
            f"add up to {format_minor(total, loan.currency)}, more than the loan's payoff "
            f"amount {format_minor(payoff, loan.currency)} on {as_of}"
        )
        raise AmountExceedsPayoff.field("installments", message)
