"""Payments and reversals: every change replays the loan's applied payments from the start."""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.api.auth import Principal
from app.api.pagination import PageParams, after_integer
from app.api_keys.models import Role
from app.db import insert_rows, insert_together, update_rows, utc_now
from app.delinquency import service as delinquency
from app.delinquency.rules import late_fee_minor
from app.errors import InvalidRequest
from app.events import service as events
from app.ids import new_id
from app.ledger.models import LedgerTransaction, TransactionKind
from app.loans import service as loans_service
from app.loans.errors import LoanNotActive, LoanNotFound
from app.loans.models import OPEN_STATUSES, InstallmentStatus, Loan, LoanInstallment, LoanStatus
from app.loans.records import paid_minor
from app.loans.schedule import (
    Amortization,
    FeeCollection,
    InstallmentsDoNotFit,
    ScheduledInstallment,
    ScheduleTerms,
    anchor_day,
    deferred,
    extended,
    first_period_days,
)
from app.money import Rounding, format_minor, parse_amount, payment_ceiling
from app.payments.allocation import (
    Allocation,
    InstallmentTerms,
    LateFee,
    LoanPosition,
    PaymentIn,
    fees_to_waive,
    forgiven_on,
    late_fee_changes,
    replay,
)
from app.payments.errors import (
    AmountExceedsPayoff,
    PaymentAlreadyRecorded,
    PaymentAlreadyReversed,
    PaymentNotFound,
)
from app.payments.models import Payment, PaymentAllocation, PaymentStatus, ReversalReason
from app.portfolio import positions
from app.products import service as products
from app.products.models import Product
from app.promises import service as promises
from app.risk import service as risk

# The ledger's rows on an installment's fees, which the replay reads.
_FEE_KINDS = (
    TransactionKind.LATE_FEE,
    TransactionKind.FEE_WAIVER,
    TransactionKind.LATE_FEE_FORGIVEN,
    TransactionKind.LATE_FEE_REINSTATED,
)

# Core, built once: every payment, reversal, waiver and holiday rewrites the loan's allocations.
_allocations = cast(Table, PaymentAllocation.__table__)
_installments = cast(Table, LoanInstallment.__table__)
_payments = cast(Table, Payment.__table__)
_ledger_rows = cast(Table, LedgerTransaction.__table__)
# What a new payment is built with; the reversal's columns stay NULL.
_PAYMENT_KEYS = (
    "id", "loan_id", "amount_minor", "received_on", "channel", "external_ref", "gateway",
    "status", "created_at",
)  # fmt: skip
_DELETE_ALLOCATIONS = delete(_allocations).where(_allocations.c.loan_id == bindparam("loan_id"))
_DELETE_PAYMENT_ALLOCATIONS = delete(_allocations).where(
    _allocations.c.payment_id == bindparam("payment_id")
)
# A gateway reports money already taken: a paid-off or cancelled loan takes it as credit.
_SETTLED = (LoanStatus.PAID_OFF, LoanStatus.CANCELLED)


@dataclass(frozen=True)
class PaymentView:
    payment: Payment
    currency: str
    allocations: list[Allocation]
    loan: loans_service.LoanView | None = None


async def record_payment(
    session: AsyncSession,
    principal: Principal,
    *,
    loan_id: str,
    amount: str,
    received_on: date | None,
    channel: str,
    external_ref: str | None,
    gateway: str | None = None,
    field_prefix: str = "",
) -> PaymentView:
    """``gateway`` names the gateway reporting the payment (it alone may charge it back);
    ``field_prefix`` is where the body carries the fields, to name them in an error
    (``data.`` in a gateway's notification).

    A POS offers money and is refused what the loan does not owe. A gateway reports money it
    has collected already (an auto-debit racing a payoff at the till): a paid-off loan takes
    it, and what the loan does not owe is kept as its credit balance, owed back to the
    borrower, rather than lost from the books while the gateway retries for days. A cancelled
    loan owes nothing: all of it is credit balance."""
    principal.require(Role.MERCHANT)
    loan = await loans_service.get_loan(session, principal, loan_id=loan_id, for_update=True)
    collected = gateway is not None
    takes_payments = (*OPEN_STATUSES, *_SETTLED) if collected else OPEN_STATUSES
    if loan.status not in takes_payments:
        raise LoanNotActive(f"loan {loan.id} is {loan.status} and takes no payments")
    amount_minor = parse_amount(
        f"{field_prefix}amount", amount, loan.currency, ceiling=payment_ceiling()
    )
    today = clock.today()
    received_on = received_on or today
    if not loan.disbursed_on <= received_on <= today:
        raise InvalidRequest.field(
            f"{field_prefix}received_on",
            f"must be between disbursed_on ({loan.disbursed_on}) and today ({today})",
        )
    earlier = await _applied_payments(session, loan.id, refusing_ref=external_ref)
    payment = Payment(
        id=new_id("pay"),
        loan_id=loan.id,
        amount_minor=amount_minor,
        received_on=received_on,
        channel=channel,
        external_ref=external_ref,
        gateway=gateway,
        status=PaymentStatus.APPLIED,
        created_at=utc_now(),
    )
    if loan.status == LoanStatus.CANCELLED:
        return await _credit_cancelled_loan(session, loan, payment)
    installments = await loans_service.load_installments(session, loan.id)
    terms, fee_rows = await _terms(session, installments)
    payments = sorted([*earlier, _payment_in(payment)], key=_receipt_order)
    position = await _replay(session, loan, terms, payments)
    if position.credit_balance_minor > loan.credit_balance_minor and not collected:
        excess = position.credit_balance_minor - loan.credit_balance_minor
        if all(p.received_on <= received_on for p in earlier):
            # What the replay took as the payoff, less a late fee this payment shows was
            # charged too soon (one charged on its own date).
            payoff = amount_minor - excess
        else:
            then = await _replay(
                session, loan, terms, [p for p in earlier if p.received_on <= received_on]
            )
            payoff = then.payoff_minor(received_on)
        if amount_minor > payoff:
            detail = (
                f"amount {amount} exceeds the payoff amount "
                f"{format_minor(payoff, loan.currency)} on {received_on}"
            )
        else:  # within the payoff on its date, but the payments received after it replay
            detail = (
                f"amount {amount} on {received_on} would overpay the loan by "
                f"{format_minor(excess, loan.currency)}: the payments received after it "
                "already pay the rest"
            )
        raise AmountExceedsPayoff(detail)

    # No race on external_ref: the duplicate check above ran under the loan's row lock.
    await _insert_payment(session, loan, payment)
    status_before = loan.status
    # The response's view reads the loan as it is after the store.
    view = loans_service.LoanView(
        loan, installments, today, await delinquency.business_date(session)
    )
    as_of = await delinquency.change_date(session, loan, received_on)
    await _store_position(
        session, loan, installments, position, fee_rows, as_of=as_of, changed_on=received_on,
        reckon=False,
    )  # fmt: skip
    await events.emit(
        session, "payment.received", payment_event_data(loan, payment, status_before), loan=loan
    )
    await _reckon(session, loan, position, as_of, status_before)
    return PaymentView(payment, loan.currency, position.allocations_of(payment.id), view)


async def reverse_payment(
    session: AsyncSession,
    principal: Principal,
    *,
    payment_id: str,
    reason: ReversalReason,
    reversed_on: date | None = None,
    date_field: str = "reversed_on",
) -> PaymentView:
    """Undo a payment (bounced, charged back, or booked in error) and re-allocate every later
    payment as if it had never been received. ``reversed_on`` (default today) is the business
    date the reversal counts from; ``date_field`` names it in an error."""
    principal.require(Role.MERCHANT)
    loan_id = await session.scalar(select(Payment.loan_id).where(Payment.id == payment_id))
    if loan_id is None:
        raise PaymentNotFound(f"payment {payment_id} does not exist")
    try:
        loan = await loans_service.get_loan(session, principal, loan_id=loan_id, for_update=True)
    except LoanNotFound:
        raise PaymentNotFound(f"payment {payment_id} does not exist") from None
    # Read under the loan's lock: a concurrent reversal of the same payment has finished.
    payment = await session.scalar(
        select(Payment).where(Payment.id == payment_id).execution_options(populate_existing=True)
    )
    assert payment is not None
    if payment.status == PaymentStatus.REVERSED:
        raise PaymentAlreadyReversed(f"payment {payment.id} was reversed already")
    today = clock.today()
    reversed_on = reversed_on or today
    if not payment.received_on <= reversed_on <= today:
        # It dates the payment_reversal window: a reversal before its payment was received,
        # or one still to come, would hold a flag on nothing that happened.
        raise InvalidRequest.field(
            date_field,
            f"must be between the payment's received_on ({payment.received_on}) "
            f"and today ({today})",
        )

    payment.status = PaymentStatus.REVERSED
    payment.reversal_reason = reason
    payment.reversed_at = utc_now()
    payment.reversed_on = reversed_on
    payment.allocation_at_reversal = [
        {"installment_seq": a.installment_seq, "fees_minor": a.fees_minor,
         "interest_minor": a.interest_minor, "principal_minor": a.principal_minor}
        for a in await session.scalars(
            select(PaymentAllocation)
            .where(PaymentAllocation.payment_id == payment.id)
            .order_by(PaymentAllocation.installment_seq)
        )
    ]  # fmt: skip
    _ledger(session, loan, TransactionKind.REVERSAL, payment, reversed_on, note=reason)
    installments = await loans_service.load_installments(session, loan.id)
    business_date = await delinquency.business_date(session)
    view = loans_service.LoanView(loan, installments, today, business_date)
    status_before, as_of = loan.status, await delinquency.change_date(session, loan, reversed_on)
    position = None
    if loan.status == LoanStatus.CANCELLED:
        _take_back_from_refund(session, loan, payment, installments, reversed_on)
        await session.execute(_DELETE_PAYMENT_ALLOCATIONS, {"payment_id": payment.id})
        # Its promises, cancelled with it, give the money back too: one went on reading the
        # bounced payment as paid (a re-verifier's).
        await promises.refresh_loan(session, loan, as_of)
    else:
        remaining = [p for p in await _applied_payments(session, loan.id) if p.id != payment.id]
        position = await _replay_and_store(
            session, loan, installments, remaining, as_of=as_of, changed_on=reversed_on,
            reckon=False,
        )  # fmt: skip
    await events.emit(
        session,
        "payment.reversed",
        {
            **payment_event_data(loan, payment, status_before),
            "reason": reason,
            "reversed_on": reversed_on.isoformat(),
        },
        loan=loan,
    )
    if position is not None:  # what it leads to comes after it in the feed
        await _reckon(session, loan, position, as_of, status_before)
    return PaymentView(payment, loan.currency, [], view)


async def get_payment(
    session: AsyncSession, principal: Principal, *, payment_id: str
) -> PaymentView:
    payment = await session.get(Payment, payment_id)
    if payment is None:
        raise PaymentNotFound(f"payment {payment_id} does not exist")
    try:
        loan = await loans_service.get_loan(session, principal, loan_id=payment.loan_id)
    except LoanNotFound:
        raise PaymentNotFound(f"payment {payment_id} does not exist") from None
    rows = await session.scalars(
        select(PaymentAllocation)
        .where(PaymentAllocation.payment_id == payment.id)
        .order_by(PaymentAllocation.installment_seq)
    )
    allocations = [
        Allocation(a.payment_id, a.installment_seq, a.fees_minor, a.interest_minor,
                   a.principal_minor)
        for a in rows
    ]  # fmt: skip
    return PaymentView(payment, loan.currency, allocations)


async def list_transactions(
    session: AsyncSession, principal: Principal, *, loan_id: str, page: PageParams
) -> tuple[Loan, list[LedgerTransaction]]:
    loan = await loans_service.get_loan(session, principal, loan_id=loan_id)
    query = (
        select(LedgerTransaction)
        .where(LedgerTransaction.loan_id == loan.id)
        .order_by(LedgerTransaction.id)
        .limit(page.limit + 1)
    )
    if (last := after_integer(page)) is not None:
        query = query.where(LedgerTransaction.id > last)
    return loan, list(await session.scalars(query))


def payment_event_data(
    loan: Loan, payment: Payment, loan_status: str | None = None
) -> dict[str, object]:
    """The payment and the loan's balances after it (the caller has stored them), with the
    loan's status before the reckoning that follows (``loan_status``; the loan's by default):
    that reckoning's events tell the move, a payoff's and a reopening's too (the payment said
    paid_off already, and its loan.delinquency_changed from active: a tester's)."""
    return {
        "payment_id": payment.id,
        "loan_id": loan.id,
        "borrower_id": loan.borrower_id,
        "merchant_id": loan.merchant_id,
        "amount": format_minor(payment.amount_minor, loan.currency),
        "currency": loan.currency,
        "received_on": payment.received_on.isoformat(),
        "channel": payment.channel,
        "external_ref": payment.external_ref,
        "status": payment.status,
        "loan_status": loan_status or loan.status,
        "principal_outstanding": format_minor(loan.principal_outstanding_minor, loan.currency),
        "credit_balance": format_minor(loan.credit_balance_minor, loan.currency),
        "refund_due": format_minor(loan.refund_due_minor, loan.currency),
    }


async def _credit_cancelled_loan(
    session: AsyncSession, loan: Loan, payment: Payment
) -> PaymentView:
    """A gateway's debit on a returned purchase: money taken that nothing is owed for. It pays
    no installment (the refund stated at cancellation stands) and all of it is credit
    balance, owed back beside the refund."""
    await _insert_payment(session, loan, payment)
    loan.credit_balance_minor += payment.amount_minor
    await events.emit(session, "payment.received", payment_event_data(loan, payment), loan=loan)
    return PaymentView(payment, loan.currency, [], await loans_service.loan_view(session, loan))


async def _insert_payment(session: AsyncSession, loan: Loan, payment: Payment) -> None:
    """The new payment, its ledger row and its portfolio delta, in one round trip on
    PostgreSQL (``insert_together``) where the ORM's flush took three: each is a tenth of a
    payment's statements (bench/request_profile.py). The payment object is not added to the
    session: nothing else in the request changes it."""
    await insert_together(
        session,
        (_payments, [{key: getattr(payment, key) for key in _PAYMENT_KEYS}]),
        (
            _ledger_rows,
            [{
                "loan_id": loan.id, "kind": TransactionKind.PAYMENT,
                "amount_minor": payment.amount_minor, "currency": loan.currency,
                "effective_on": payment.received_on, "payment_id": payment.id,
                "created_at": payment.created_at,
            }],
        ),
        positions.new_payment_deltas(loan, payment),
    )  # fmt: skip


def _take_back_from_refund(
    session: AsyncSession,
    loan: Loan,
    payment: Payment,
    installments: list[LoanInstallment],
    reversed_on: date,
) -> None:
    """A reversal on a cancelled loan: the borrower is owed back only money that stands. What
    the payment paid leaves its installments and the refund due (a ``refund_reduced`` row);
    the rest of it leaves the credit balance. No replay: a cancelled loan owes nothing, so
    the other payments stay where they were when the refund was stated."""
    by_seq = {i.seq: i for i in installments}
    allocated = 0
    for part in payment.allocation_at_reversal or ():
        installment = by_seq[part["installment_seq"]]
        installment.paid_fees_minor -= part["fees_minor"]
        installment.paid_interest_minor -= part["interest_minor"]
        installment.paid_principal_minor -= part["principal_minor"]
        installment.paid_on = None
        installment.status = (
            InstallmentStatus.PARTIALLY_PAID
            if paid_minor(installment)
            else InstallmentStatus.PENDING
        )
        allocated += part["fees_minor"] + part["interest_minor"] + part["principal_minor"]
    loan.credit_balance_minor -= payment.amount_minor - allocated
    loan.refund_due_minor -= allocated
    if allocated:
        loan.paid_off_on = None  # its installments are no longer all paid
        # The refund it reduces was owed from the cancellation, whenever the payment bounced.
        effective_on = max(reversed_on, loan.cancelled_on or reversed_on)
        session.add(
            LedgerTransaction(
                loan_id=loan.id, kind=TransactionKind.REFUND_REDUCED, amount_minor=allocated,
                currency=loan.currency, effective_on=effective_on, payment_id=payment.id,
                created_at=utc_now(),
            )
        )  # fmt: skip


def _payment_in(payment: Payment) -> PaymentIn:
    return PaymentIn(payment.id, payment.amount_minor, payment.received_on)


def _receipt_order(payment: PaymentIn) -> tuple[date, str]:
    return payment.received_on, payment.id


_APPLIED = Payment.status == PaymentStatus.APPLIED
_SAME_REF = Payment.external_ref == bindparam("external_ref")
_APPLIED_PAYMENTS, _APPLIED_PAYMENTS_OR_SAME_REF = (
    select(Payment.id, Payment.amount_minor, Payment.received_on, _APPLIED, _SAME_REF)
    .where(Payment.loan_id == bindparam("loan_id"), condition)
    .order_by(Payment.received_on, Payment.id)
    for condition in (_APPLIED, or_(_APPLIED, _SAME_REF))
)


async def _applied_payments(
    session: AsyncSession, loan_id: str, *, refusing_ref: str | None = None
) -> list[PaymentIn]:
    """The loan's applied payments in receipt order. With ``refusing_ref``, refused if any
    payment of the loan (reversed ones too) has that ``external_ref``: read in the same round
    trip, under the loan's row lock, so no twin can slip in between."""
    if refusing_ref is None:
        statement, params = _APPLIED_PAYMENTS, {"loan_id": loan_id, "external_ref": None}
    else:
        statement = _APPLIED_PAYMENTS_OR_SAME_REF
        params = {"loan_id": loan_id, "external_ref": refusing_ref}
    applied = []
    for payment_id, amount_minor, received_on, is_applied, same_ref in await session.execute(
        statement, params
    ):
        if same_ref:
            raise PaymentAlreadyRecorded(
                f"payment {payment_id} with external_ref {refusing_ref} is already recorded"
            )
        if is_applied:
            applied.append(PaymentIn(payment_id, amount_minor, received_on))
    return applied


async def waive_fees(
    session: AsyncSession,
    loan: Loan,
    *,
    cap_minor: int | None,
    note: str,
    as_of: date,
    reckon_on: date,
) -> int:
    """Forgive the fees due on the loan (locked by the caller) on the business date ``as_of``,
    oldest installment first, up to ``cap_minor`` (all of them when None): one ``fee_waiver``
    ledger row per installment, then the loan's payments replayed with those fees never
    charged, as a reversal replays them, and the loan reckoned as of ``reckon_on``. Returns
    what was forgiven (0: nothing was due)."""
    installments = await loans_service.load_installments(session, loan.id)
    terms, _ = await _terms(session, installments)
    payments = await _applied_payments(session, loan.id)
    forgiven = fees_to_waive(await _replay(session, loan, terms, payments), as_of, cap_minor)
    now = utc_now()
    session.add_all(
        LedgerTransaction(
            loan_id=loan.id, kind=TransactionKind.FEE_WAIVER, amount_minor=amount,
            currency=loan.currency, effective_on=as_of, installment_seq=seq, note=note,
            created_at=now,
        )
        for seq, amount in forgiven.items()
    )  # fmt: skip
    if forgiven:
        await session.flush()  # the replay reads the waivers back with the late fees
        # The waterfall pays an installment's fees first, so what is forgiven never settles one.
        await _replay_and_store(
            session, loan, installments, payments, as_of=reckon_on, changed_on=as_of
        )
    return sum(forgiven.values())


async def defer_installments(
    session: AsyncSession, loan: Loan, *, months: int, as_of: date, reckon_on: date
) -> list[tuple[int, date, date]]:
    """A payment holiday on the loan (locked by the caller): the installments not yet due on
    the business date ``as_of``, from the first not paid in full, fall due ``months`` later,
    with the same amounts (no interest for the holiday), and the payments are replayed on the
    new dates, the loan reckoned as of ``reckon_on``. Returns each moved installment's (seq,
    old due date, new due date); none when nothing ahead is left to pay."""
    installments = await loans_service.load_installments(session, loan.id)
    # Installments ahead paid in full stay: moved, a paid installment of a later period no
    # longer owes its interest at payoff, which would hand the borrower's money back as a
    # credit (a tester's: a holiday paid a loan off with 5.60 over).
    paid_through = as_of
    for row in installments:
        if row.due_date > as_of:
            if _asked(row) > 0:
                break
            paid_through = row.due_date
    new_dates = deferred([i.due_date for i in installments], paid_through, months)
    moved = []
    for row, new in zip(installments, new_dates, strict=True):
        if new != row.due_date:
            moved.append((row.seq, row.due_date, new))
            row.due_date, row.reminded_on = new, None  # remind again before the new date
    if moved:
        payments = await _applied_payments(session, loan.id)
        await _replay_and_store(
            session, loan, installments, payments, as_of=reckon_on, changed_on=as_of
        )
    return moved


@dataclass(frozen=True)
class Extension:
    term_was: int
    installment_was: int
    installment: int


async def extend_term(
    session: AsyncSession, loan: Loan, *, months: int, as_of: date, reckon_on: date
) -> Extension | None:
    """A term extension on the loan (locked by the caller): the installments not yet due on
    the business date ``as_of``, from the first whose principal is still owed, are
    re-amortised over as many and ``months`` more (``extended``), the loan's term grows by
    ``months`` and the payments are replayed on the new schedule, the loan reckoned as of
    ``reckon_on``. Returns the term before and what the first re-amortised installment asks
    (less what is paid on it) before and after; None when no principal ahead is owed.
    InstallmentsDoNotFit when the product's multiple does not fit what is left, or an
    installment would ask nothing.

    Installments whose principal money paid ahead already paid stay as they are, their
    interest owed on their dates as before: re-amortised, the principal still owed later
    would fall due on them, and relief would ask for money on dates the borrower had covered
    (testers': a loan paid through its next date owed 276.62 on it; one prepaid by 4,000.00
    owed 133.64 a month where it had owed only interest)."""
    installments = await loans_service.load_installments(session, loan.id)
    ahead = [i for i in installments if i.due_date > as_of]
    while ahead and ahead[0].paid_principal_minor >= ahead[0].principal_minor:
        ahead.pop(0)
    if not ahead:
        return None
    product = await session.get_one(Product, loan.product_code)
    terms = ScheduleTerms(
        principal_minor=loan.principal_minor,  # replaced by what is ahead
        annual_rate=loan.annual_interest_rate,
        term=loan.term,
        amortization=Amortization(loan.amortization),
        rounding=Rounding(loan.rounding),
        installment_multiple_of_minor=product.installment_multiple_of_minor,
        fee_collection=FeeCollection(product.origination_fee_collection or FeeCollection.UPFRONT),
        # A payment holiday moves the first due date but charges nothing for it: the first
        # period is the one the loan was originated with.
        first_period_days=first_period_days(loan.disbursed_on, loan.first_due_date),
    )
    scheduled = [
        ScheduledInstallment(i.seq, i.due_date, i.principal_minor, i.interest_minor, i.fees_minor)
        for i in ahead
    ]
    anchor = anchor_day([i.due_date for i in installments])
    new = extended(scheduled, months, terms, anchor, ahead[0].paid_principal_minor)
    if any(i.principal_minor + i.interest_minor + i.fees_minor == 0 for i in new):
        # A few cents over many months: an installment of 0.00 is no promise to pay, as at
        # origination (a tester saw two such installments `pending` for ever).
        raise InstallmentsDoNotFit(f"loan {loan.id}: an installment would ask nothing")
    was = _asked(ahead[0])
    for row, planned in zip(ahead, new[: len(ahead)], strict=True):
        row.due_date, row.principal_minor = planned.due_date, planned.principal_minor
        row.interest_minor, row.fees_minor = planned.interest_minor, planned.fees_minor
        row.reminded_on = None  # remind again of the new amount
    added = [
        LoanInstallment(
            loan_id=loan.id, seq=planned.seq, due_date=planned.due_date,
            principal_minor=planned.principal_minor, interest_minor=planned.interest_minor,
            fees_minor=planned.fees_minor, late_fees_minor=0, paid_principal_minor=0,
            paid_interest_minor=0, paid_fees_minor=0, interest_waived_minor=0,
            fees_waived_minor=0, paid_on=None, status=InstallmentStatus.PENDING,
        )
        for planned in new[len(ahead) :]
    ]  # fmt: skip
    session.add_all(added)
    term_was, loan.term = loan.term, loan.term + months
    loan.restructured_on = as_of  # the replay's delinquency makes it `restructured` if current
    payments = await _applied_payments(session, loan.id)
    await _replay_and_store(
        session, loan, [*installments, *added], payments, as_of=reckon_on, changed_on=as_of
    )
    return Extension(term_was=term_was, installment_was=was, installment=_asked(ahead[0]))


def _asked(installment: LoanInstallment) -> int:
    """What an installment still asks: its amount less what is paid or waived on it."""
    return (
        installment.principal_minor + installment.interest_minor + installment.fees_minor
        + installment.late_fees_minor - paid_minor(installment)
        - installment.interest_waived_minor - installment.fees_waived_minor
    )  # fmt: skip


async def paid_since(session: AsyncSession, since: Mapping[str, date]) -> list[str]:
    """Of the loans of ``since``, those with an applied payment received on or after the loan's
    date. The close's late fees count from their dates, so such a payment pays them first,
    where the stored allocations put the money elsewhere (``replay_after_fees``)."""
    p = Payment.__table__.c
    loan_ids = sorted(since)
    paid: set[str] = set()
    # A slice of loans at a time: each is a bound parameter, and drivers take 32,767.
    for n in range(0, len(loan_ids), 10_000):
        batch = loan_ids[n : n + 10_000]
        rows = await session.execute(
            select(p.loan_id, p.received_on).where(
                p.loan_id.in_(batch),
                p.received_on >= min(since[loan_id] for loan_id in batch),
                p.status == PaymentStatus.APPLIED.value,
            )
        )
        paid.update(loan_id for loan_id, received_on in rows if received_on >= since[loan_id])
    return sorted(paid)


@dataclass(frozen=True)
class FeeReplay:
    withdrawn: int  # late fees the replays withdrew, wholly or in part
    # loan.delinquency_changed of each loan paid off no more: its payoff paid the fees first
    reopened: list[dict[str, Any]]


async def replay_after_fees(
    session: AsyncSession, loan_ids: Sequence[str], as_of: date
) -> FeeReplay:
    """Replay the loans ``loan_ids``, locked by the close, after it charged them late fees as
    of ``as_of``. A loan it had paid off is open again when its payments pay the fees first,
    its delinquency reckoned as a reversal's is (its move told from `paid_off`). A slice of
    loans at a time, each statement for the whole slice: a back-dated book's first close
    replays every loan paid after a grace, and one loan at a time its fee step took 37 s on a
    100,000-loan book, against 15 s (docs/benchmarks.md). The installments are read and
    written as rows, the changed ones in one statement: as mapped objects, the columns each
    changed differed from row to row, and their flush sent a statement for nearly each."""
    withdrawn = 0
    reopened: list[dict[str, Any]] = []
    for n in range(0, len(loan_ids), 1_000):
        batch = list(loan_ids[n : n + 1_000])
        params = {"loan_ids": batch}
        loans = (await session.scalars(_LOANS_OF, params)).all()
        installments = _by_loan(await session.execute(_INSTALLMENTS_OF, params))
        fee_rows = _by_loan(await session.execute(_FEE_ROWS, params))
        payments = _by_loan(await session.execute(_APPLIED_PAYMENTS_OF, params))
        # Looked up once: a get per loan flushed every loan's writes on its own.
        codes = {"codes": sorted({loan.product_code for loan in loans})}
        product = {p.code: p for p in await session.scalars(_PRODUCTS_OF, codes)}
        allocations: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        for loan in loans:
            stored = installments[loan.id]
            terms, fees = _terms_of(stored, fee_rows[loan.id])
            applied = [PaymentIn(p.id, p.amount_minor, p.received_on) for p in payments[loan.id]]
            position = _replay_on(loan, product[loan.product_code], terms, applied)
            allocations += _allocation_rows(loan.id, position)
            changes = late_fee_changes(position, fees.forgiven).values()
            withdrawn += sum(1 for change in changes if change > 0)
            for row, columns in zip(stored, _installment_columns(position, fees), strict=True):
                if any(getattr(row, name) != value for name, value in columns.items()):
                    changed.append({"loan_id": loan.id, "seq": row.seq, **columns})
            status_before = await _store_loan(session, loan, position, fees, changed_on=as_of)
            if status_before == LoanStatus.PAID_OFF and loan.status != LoanStatus.PAID_OFF:
                change = delinquency.apply_delinquency(loan, position, as_of, status_before)
                assert change is not None  # its status moved
                reopened.append(change.event())
            # After the reckoning of a loan open again too: reckoned as of a date before its
            # booking, it keeps the spell its booking read (a re-verifier's).
            delinquency.restate_history(loan, position, as_of)
        await update_rows(session, _installments, ("loan_id", "seq"), changed)
        await session.execute(_DELETE_ALLOCATIONS_OF, params)
        await insert_rows(session, _allocations, allocations)
    return FeeReplay(withdrawn, reopened)


# The close's replay reads and writes loans a slice at a time. The loans are read again as
# stored: the close changed them in bulk, beside the session's objects.
_LOANS_OF = (
    select(Loan)
    .where(Loan.id.in_(bindparam("loan_ids", expanding=True)))
    .order_by(Loan.id)  # each loan's withdrawn fees are told as it is replayed
    .execution_options(populate_existing=True)
)
_INSTALLMENTS_OF = (
    select(_installments)
    .where(_installments.c.loan_id.in_(bindparam("loan_ids", expanding=True)))
    .order_by(_installments.c.loan_id, _installments.c.seq)
)
_APPLIED_PAYMENTS_OF = (
    select(Payment.loan_id, Payment.id, Payment.amount_minor, Payment.received_on)
    .where(Payment.loan_id.in_(bindparam("loan_ids", expanding=True)), _APPLIED)
    .order_by(Payment.loan_id, Payment.received_on, Payment.id)
)
_PRODUCTS_OF = select(Product).where(Product.code.in_(bindparam("codes", expanding=True)))
_DELETE_ALLOCATIONS_OF = delete(_allocations).where(
    _allocations.c.loan_id.in_(bindparam("loan_ids", expanding=True))
)


def _by_loan(rows: Iterable[Any]) -> defaultdict[str, list[Any]]:
    """Rows with a ``loan_id``, grouped by it, in the order given."""
    grouped: defaultdict[str, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[row.loan_id].append(row)
    return grouped


async def _replay_and_store(
    session: AsyncSession,
    loan: Loan,
    installments: list[LoanInstallment],
    payments: list[PaymentIn],
    *,
    as_of: date,
    changed_on: date | None = None,
    reckon: bool = True,
) -> LoanPosition:
    """Replay ``payments`` on the installments' terms as the ledger now has them, and store.
    ``changed_on``: the date of the change (``as_of`` by default), for the ledger."""
    terms, fee_rows = await _terms(session, installments)
    position = await _replay(session, loan, terms, payments)
    await _store_position(
        session, loan, installments, position, fee_rows, as_of=as_of,
        changed_on=changed_on or as_of, reckon=reckon,
    )  # fmt: skip
    return position


async def _replay(
    session: AsyncSession, loan: Loan, terms: list[InstallmentTerms], payments: list[PaymentIn]
) -> LoanPosition:
    """``payments`` replayed on ``terms``, a late fee on an installment settled in its grace
    withdrawn at the arrears tolerance the close charges by, and a percent one lowered to the
    product's fee on what the grace left unpaid."""
    # The product only matters to a loan charged a late fee.
    charged = any(t.late_fees for t in terms)
    product = await session.get_one(Product, loan.product_code) if charged else None
    return _replay_on(loan, product, terms, payments)


def _replay_on(
    loan: Loan, product: Product | None, terms: list[InstallmentTerms], payments: list[PaymentIn]
) -> LoanPosition:
    """``_replay`` with the loan's product at hand (needed when a late fee was charged)."""
    tolerance = delinquency.tolerance_minor(loan.currency)
    late_fee_for, grace_days = None, 0
    if any(t.late_fees for t in terms):
        assert product is not None
        grace_days = product.grace_days
        policy = products.late_fee_policy(product)
        if policy is not None and policy.kind == "percent":
            late_fee_for = partial(late_fee_minor, policy)
    return replay(
        terms, payments, arrears_tolerance_minor=tolerance, late_fee_for=late_fee_for,
        grace_days=grace_days,
    )  # fmt: skip


@dataclass(frozen=True)
class _FeeRows:
    """A loan's ledger rows on its fees besides the charges, summed by installment."""

    # fee_waiver: the replay sees those fees as never charged, the installment counts them waived
    waived: dict[int, int]
    # late fees a replay withdrew (late_fee_forgiven), less those owed again since (reinstated)
    forgiven: dict[int, int]


async def _terms(
    session: AsyncSession, installments: list[LoanInstallment]
) -> tuple[list[InstallmentTerms], _FeeRows]:
    """Each installment's amounts, with its late fees on the dates they were assessed and the
    fees waived on it forgiven as if never charged; and the ledger's other fee rows. All from
    the ledger, read only when the loan has fees at all."""
    rows: list[Any] = []
    if installments and any(i.late_fees_minor or i.fees_minor for i in installments):
        rows = list(await session.execute(_FEE_ROWS, {"loan_ids": [installments[0].loan_id]}))
    return _terms_of(installments, rows)


# The loans' ledger rows on fees, in the order written: the ledger holds the fees' dates.
_FEE_ROWS = (
    select(
        LedgerTransaction.loan_id,
        LedgerTransaction.kind,
        LedgerTransaction.installment_seq,
        LedgerTransaction.effective_on,
        LedgerTransaction.amount_minor,
    )
    .where(
        LedgerTransaction.loan_id.in_(bindparam("loan_ids", expanding=True)),
        LedgerTransaction.kind.in_(_FEE_KINDS),
    )
    .order_by(LedgerTransaction.id)
)


def _terms_of(
    installments: list[LoanInstallment], fee_rows: Iterable[Any]
) -> tuple[list[InstallmentTerms], _FeeRows]:
    """``_terms`` from the loan's ledger rows on fees (``_FEE_ROWS``)."""
    late_fees: dict[int, list[LateFee]] = defaultdict(list)
    waived: dict[int, int] = defaultdict(int)
    forgiven: dict[int, int] = defaultdict(int)
    for _loan_id, kind, seq, effective_on, amount in fee_rows:
        assert seq is not None
        if kind == TransactionKind.FEE_WAIVER:
            waived[seq] += amount
        elif kind == TransactionKind.LATE_FEE_FORGIVEN:
            forgiven[seq] += amount
        elif kind == TransactionKind.LATE_FEE_REINSTATED:
            forgiven[seq] -= amount
        else:
            late_fees[seq].append(LateFee(effective_on, amount))
    terms = [
        InstallmentTerms(
            seq=i.seq,
            due_date=i.due_date,
            principal_minor=i.principal_minor,
            interest_minor=i.interest_minor,
            fees_minor=i.fees_minor,
            late_fees=tuple(late_fees[i.seq]),
        ).without_fees(waived[i.seq])
        for i in installments
    ]
    return terms, _FeeRows(dict(waived), dict(forgiven))


async def _store_position(
    session: AsyncSession,
    loan: Loan,
    installments: list[LoanInstallment],
    position: LoanPosition,
    fee_rows: _FeeRows,
    *,
    as_of: date,
    changed_on: date,
    reckon: bool = True,
) -> None:
    """Write a replayed position: installments, allocations and the loan's derived balances,
    and with ``reckon`` the loan's delinquency, promises and risk as of ``as_of``, the
    delinquency date. Delinquency counts every payment recorded, those received after
    ``as_of`` included: a borrower who pays their arrears today is current at once, not after
    tonight's close (the close of an earlier date, a catch-up, reckons that date without
    them). ``fee_rows``: the fee waivers by installment, which the replay saw as
    fees never charged and the rows (charged as assessed) count as waived; and the late fees
    forgiven so far. ``changed_on``: the date of the change, for the ledger."""
    await session.execute(_DELETE_ALLOCATIONS, {"loan_id": loan.id})
    await insert_rows(session, _allocations, _allocation_rows(loan.id, position))
    for row, columns in zip(installments, _installment_columns(position, fee_rows), strict=True):
        for name, value in columns.items():
            setattr(row, name, value)
    status_before = await _store_loan(session, loan, position, fee_rows, changed_on=changed_on)
    if reckon:
        await _reckon(session, loan, position, as_of, status_before)


def _allocation_rows(loan_id: str, position: LoanPosition) -> list[dict[str, Any]]:
    return [
        {"payment_id": a.payment_id, "installment_seq": a.installment_seq, "loan_id": loan_id,
         "fees_minor": a.fees_minor, "interest_minor": a.interest_minor,
         "principal_minor": a.principal_minor}
        for a in position.allocations
    ]  # fmt: skip


def _installment_columns(position: LoanPosition, fee_rows: _FeeRows) -> list[dict[str, Any]]:
    """Each installment's stored columns the replayed ``position`` sets, in order."""
    columns = []
    for new in position.installments:
        if new.paid_on is not None:
            status = InstallmentStatus.PAID
        elif new.paid_minor:
            status = InstallmentStatus.PARTIALLY_PAID
        else:
            status = InstallmentStatus.PENDING
        columns.append({
            "paid_fees_minor": new.paid_fees_minor,
            "paid_interest_minor": new.paid_interest_minor,
            "paid_principal_minor": new.paid_principal_minor,
            "interest_waived_minor": new.interest_waived_minor,
            "fees_waived_minor": new.late_fees_withdrawn_minor + fee_rows.waived.get(new.seq, 0),
            "paid_on": new.paid_on,
            "settled_on": new.missed_until,
            "status": status.value,
        })  # fmt: skip
    return columns


async def _store_loan(
    session: AsyncSession,
    loan: Loan,
    position: LoanPosition,
    fee_rows: _FeeRows,
    *,
    changed_on: date,
) -> str:
    """The loan's balances and status from the replayed ``position``, and the late fees it
    forgives. The loan's status before."""
    loan.principal_outstanding_minor = position.principal_outstanding_minor
    loan.credit_balance_minor = position.credit_balance_minor
    await _record_late_fees_forgiven(session, loan, position, fee_rows.forgiven, changed_on)
    status_before = loan.status
    if position.paid_off_on is not None:
        loan.status = LoanStatus.PAID_OFF
        loan.paid_off_on = position.paid_off_on
    elif loan.status == LoanStatus.PAID_OFF:
        restructured = loan.restructured_on is not None
        loan.status = LoanStatus.RESTRUCTURED if restructured else LoanStatus.ACTIVE
        loan.paid_off_on = None
    return status_before


async def _reckon(
    session: AsyncSession, loan: Loan, position: LoanPosition, as_of: date, status_before: str
) -> None:
    """The same rules as the nightly close, at once, in this transaction: promises before
    risk, so a promise this payment keeps (or a reversal breaks) counts in the flags; then
    ``loan.paid_off`` if the change paid the loan off, a payment or a relief's replay alike.
    ``status_before``: the loan's status before the change."""
    await delinquency.refresh_loan(session, loan, position, as_of, status_before)
    await promises.refresh_loan(session, loan, as_of)
    await risk.refresh_loan(session, loan, as_of)
    if loan.status == LoanStatus.PAID_OFF and status_before != LoanStatus.PAID_OFF:
        # After the reckoning: it tells the loan as it ends, out of every bucket, and what
        # it holds of the borrower's beyond the payoff (a gateway's debit, a relief's replay).
        data = {
            **loans_service.event_data(loan),
            "credit_balance": format_minor(loan.credit_balance_minor, loan.currency),
        }
        await events.emit(session, "loan.paid_off", data, loan=loan)


async def _record_late_fees_forgiven(
    session: AsyncSession,
    loan: Loan,
    position: LoanPosition,
    recorded: dict[int, int],
    changed_on: date,
) -> None:
    """Bring the ledger to the late fees the replay withdraws (DESIGN decision 2: a charge
    taken back is a row too, or the ledger's late fees outrun the balances): withdrawn since
    the last replay, on the night each was charged; owed again, on the date of the change that
    took back the payment that had settled the installment in time. Each row is an event, as
    the charge was (`loan.late_fee_assessed`): a subscriber adding up fees from events alone
    counted a fee withdrawn as still owed (a tester's). ``loan`` holds the replayed balances."""
    now = utc_now()
    told: list[dict[str, Any]] = []
    for seq, change in late_fee_changes(position, recorded).items():
        if change > 0:
            kind, effective_on = TransactionKind.LATE_FEE_FORGIVEN, forgiven_on(position, seq)
        else:
            kind, effective_on = TransactionKind.LATE_FEE_REINSTATED, changed_on
        session.add(
            LedgerTransaction(
                loan_id=loan.id, kind=kind, amount_minor=abs(change), currency=loan.currency,
                effective_on=effective_on, installment_seq=seq, created_at=now,
            )
        )  # fmt: skip
        due_date = next(i for i in position.installments if i.seq == seq).terms.due_date
        told.append({"type": f"loan.{kind.value}", "loan_id": loan.id, "data": {
            "loan_id": loan.id, "borrower_id": loan.borrower_id, "merchant_id": loan.merchant_id,
            "installment_seq": seq, "due_date": due_date.isoformat(), "currency": loan.currency,
            "amount": format_minor(abs(change), loan.currency),
            "effective_on": effective_on.isoformat(),
            "principal_outstanding": format_minor(loan.principal_outstanding_minor, loan.currency),
        }})  # fmt: skip
    await events.emit_many(session, told)


def _ledger(
    session: AsyncSession,
    loan: Loan,
    kind: TransactionKind,
    payment: Payment,
    effective_on: date,
    note: str | None = None,
) -> None:
    session.add(
        LedgerTransaction(
            loan_id=loan.id, kind=kind, amount_minor=payment.amount_minor, currency=loan.currency,
            effective_on=effective_on, payment_id=payment.id, note=note, created_at=utc_now(),
        )
    )  # fmt: skip
