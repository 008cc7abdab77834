"""Delinquency: days past due, buckets, statuses and late fees.

Two paths apply the rules of ``rules.py``: the per-loan path (a payment or reversal refreshes
its loan in the same transaction) and the set-based steps of the nightly close, which are SQL
over a range of loan ids. Tests hold both to the same answers.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import ScalarSelect

from app import clock
from app.close.models import CloseRun, CloseStatus
from app.config import get_settings
from app.db import (
    UTCDateTime,
    add_days,
    days_between,
    execute_counting,
    insert_rows,
    is_postgres,
    least,
    utc_now,
)
from app.delinquency.rules import (
    Bucket,
    DueInstallment,
    bucket_for,
    cure_date,
    days_past_due,
    first_past_30,
    last_cure,
    past_due_since,
    spell_past_due,
    status_for,
)
from app.events import service as events
from app.ledger.models import LedgerTransaction, TransactionKind
from app.loans.models import DELINQUENCY_STATUSES, OPEN_STATUSES, Loan, LoanInstallment, LoanStatus
from app.money import MINOR_DIGITS, format_minor, setting_to_minor
from app.payments.allocation import LoanPosition
from app.payments.models import Payment, PaymentAllocation, PaymentStatus
from app.products.models import Product

Counts = dict[str, int]

# "30+ days past due" is the buckets after 1-30: from the 31st day, as the vintage curves count.
PAST_30_DAYS = 30

_installment = cast(Table, LoanInstallment.__table__)
_loan = cast(Table, Loan.__table__)
_product = cast(Table, Product.__table__)
_payment = cast(Table, Payment.__table__)
_allocation = cast(Table, PaymentAllocation.__table__)
_paid_later, _paid_later_to = _payment.alias("paid_later"), _allocation.alias("paid_later_to")

# The close's statements are built once per shape (which bounds a chunk has, the settings
# they read), the date and the loan-id range bound at execution (``chunk_params``): built for
# each chunk of each date, constructing them was most of the CPU of closing a small book.
AS_OF = bindparam("as_of", type_=Date)
# The late-fee step's: the last close that judged graces, and since when (None before any).
_JUDGED_THROUGH = bindparam("judged_through", type_=Date)
_JUDGED_SINCE = bindparam("judged_since", type_=UTCDateTime())


def _paid_off_unjudged(loan: Any) -> ColumnElement[bool]:
    """A loan paid off before the closes judged the graces its payoff came after: booked since
    the last close (or before any), or paid off on a date after the last close's."""
    unjudged = or_(
        _JUDGED_SINCE.is_(None),
        loan.created_at >= _JUDGED_SINCE,
        loan.paid_off_on > _JUDGED_THROUGH,
    )
    return and_(loan.status == LoanStatus.PAID_OFF.value, unjudged)


def _charged(loan: Any) -> ColumnElement[bool]:
    """The loans the fee step charges: the open ones, and one paid off before the closes
    judged the graces its payoff came after (a back-dated history recorded whole, its payoff
    too; a payoff recorded while the closes are behind), which owes their fees as a twin that
    met each night's close does, and is open again if the payments that paid it off pay those
    fees first (a tester's: one history, two orders of recording, 0.00 or 90.00 owed)."""
    return or_(loan.status.in_(OPEN_STATUSES), _paid_off_unjudged(loan))


# Read on most requests: built once (construction and cache key cost CPU per call).
_BUSINESS_DATE = select(func.max(CloseRun.as_of)).where(CloseRun.succeeded_at.is_not(None))


def business_date_column() -> ScalarSelect[date]:
    """The business date as a column, to read it in the same round trip as other rows."""
    return _BUSINESS_DATE.scalar_subquery()


async def business_date(session: AsyncSession) -> date | None:
    """The as-of date of the last completed close."""
    return await session.scalar(_BUSINESS_DATE)


async def delinquency_date(session: AsyncSession) -> date:
    """The date delinquency is reckoned as of: the business date, or today before any close."""
    return await business_date(session) or clock.today()


async def loan_date(session: AsyncSession, loan: Loan, *, reckoning: bool = False) -> date:
    """The date a decision on ``loan`` is made as of (relief asked, approved or rejected, a
    promise taken): the delinquency date, or with ``reckoning`` the date a change to the
    loan reckons it as of; never before the loan existed (a loan booked back-dated while the
    closes are behind)."""
    day = await reckoning_date(session) if reckoning else await delinquency_date(session)
    return max(day, loan.disbursed_on)


_CLOSING = select(func.max(CloseRun.as_of)).where(
    or_(CloseRun.succeeded_at.is_not(None), CloseRun.status == CloseStatus.RUNNING)
)


async def closing_date(session: AsyncSession) -> date | None:
    """The date of a close in progress, else the business date; None before any close."""
    return await session.scalar(_CLOSING)


async def reckoning_date(session: AsyncSession) -> date:
    """The date a payment, reversal, failed debit or approved relief reckons its loan as of.
    While a close runs, that close's date: its steps may have reckoned the loan as of it
    already, and the business date before would set the loan back a day after the close has
    moved on. Otherwise the business date, or today before any close."""
    return await closing_date(session) or clock.today()


async def change_date(session: AsyncSession, loan: Loan, happened_on: date | None = None) -> date:
    """The date a payment, a reversal or a failed debit (on ``happened_on``) reckons ``loan``
    as of: the reckoning date, or for one after it (today's, once yesterday is closed) the
    next date to close, the one tonight's close will close: as of the business date it would
    show a day that never was (yesterday, with today's money or today's bounce, while the flag
    of the bounce is dated today), and tonight's close would move the loan back a bucket it
    never left, or report the move a day early. Never before the date the
    loan is reckoned as of already (a payment today came first), and never beyond the next date
    to close: while closes are behind (a catch-up to come), flags, promises and events are
    dated on the dates closed, in order."""
    reckoning = await reckoning_date(session)
    later = max(happened_on or reckoning, loan.delinquency_as_of or reckoning)
    return max(reckoning, min(later, reckoning + timedelta(days=1), clock.today()))


def tolerance_minor(currency: str) -> int:
    return setting_to_minor(get_settings().close.arrears_tolerance, currency)


# -- the per-loan path -------------------------------------------------------------------


async def refresh_loan(
    session: AsyncSession,
    loan: Loan,
    position: LoanPosition,
    as_of: date,
    status_before: str | None = None,
) -> None:
    """Recompute one loan's delinquency after a payment or reversal (caller holds the lock).
    ``status_before``: the loan's status before the change, when the change has paid it off
    or reopened it already."""
    change = apply_delinquency(loan, position, as_of, status_before)
    if change is not None:
        event = change.event()
        await events.emit(session, event["type"], event["data"], loan=loan)


def apply_delinquency(
    loan: Loan, position: LoanPosition, as_of: date, status_before: str | None = None
) -> "DelinquencyChange | None":
    """Set one loan's days past due, bucket and status as of ``as_of``; the change to report
    when its bucket or status moved (from ``status_before``, the loan's status by default), or
    its days past due otherwise than by the days since it was reckoned. No I/O: origination
    applies it before the loan's INSERT."""
    due = _history(position, as_of)
    tolerance = tolerance_minor(loan.currency)
    if loan.status in (LoanStatus.PAID_OFF, LoanStatus.CANCELLED):
        dpd = 0
    else:
        dpd = days_past_due(as_of, [installment for installment, _ in due], tolerance)
    bucket = bucket_for(dpd)
    status = loan.status
    if status in DELINQUENCY_STATUSES:
        charge_off = get_settings().close.charge_off_after_days
        status = status_for(dpd, charge_off, restructured=loan.restructured_on is not None)
    previous = (loan.bucket, loan.status, loan.days_past_due)
    grown = _days_past_due_grown(loan, as_of)
    # Stored as of a later date (a loan booked before the first close, which may be for an
    # earlier date): this is the same loan seen earlier, not a move in time, so no cure and
    # no bucket left behind.
    onwards = loan.delinquency_as_of is None or loan.delinquency_as_of <= as_of
    if bucket != loan.bucket and onwards:
        loan.previous_bucket = loan.bucket
        if bucket == Bucket.CURRENT:
            # A payment in time reported late erases the spell it ends: the cure before that
            # spell stands. Dated on the report, the cure made the next spell a relapse from
            # a day the loan was never past due to (a tester's). Returned goods end a spell.
            erased = (
                loan.relapsed_on is not None
                and status != LoanStatus.CANCELLED
                and not past_due_since(loan.relapsed_on, as_of, due, tolerance)
            )
            loan.cured_on = loan.relapse_cured_on if erased else cure_date(as_of, due)
    if dpd > 0 and onwards:
        # From the history, which a payment or reversal may rewrite: a back-dated payment in
        # time erases a spell, a bounced one joins two (the close, which rewrites none, keeps
        # the spell as it moves: _delinquency_statements).
        loan.relapsed_on, loan.relapse_cured_on = spell_past_due(as_of, due, tolerance)
    loan.days_past_due, loan.bucket, loan.status = dpd, bucket, status
    loan.delinquency_as_of = as_of
    # From the replayed history, not kept once set: payments booked back-dated after the loan
    # (a migration) or a reversal rewrite when it first went past 30 days (vintages).
    loan.ever_30_plus_on = first_past_30(as_of, due, tolerance)
    # A payoff (the caller set it) and its reversal move the status: both are announced, from
    # the status the loan had, whether or not the bucket moves. A subscriber following the
    # loan by these events kept a reopened, current loan paid off (a tester's), and then saw
    # it reopened from a paid_off its chain never reached, when a current loan was paid off.
    settled_or_reopened = status_before is not None and status_before != status
    # Within a bucket too: a payment of the oldest installment of two a month apart took a
    # loan 90+ from 124 days to 94, and a subscriber counting a day a day from the last event
    # had 125 (a tester's).
    days_moved = grown is not None and dpd != grown
    if (previous[0], previous[1]) == (bucket, status) and not (settled_or_reopened or days_moved):
        return None
    return DelinquencyChange(
        loan.id, loan.borrower_id, loan.merchant_id, loan.currency,
        loan.principal_outstanding_minor, as_of, dpd, previous[0], bucket,
        status_before or previous[1], status,
    )  # fmt: skip


def _days_past_due_grown(loan: Loan, as_of: date) -> int | None:
    """A loan past due as reckoned, that many days more by ``as_of``; None for one not past
    due, or reckoned as of a later date (seen earlier: no move in time)."""
    reckoned = loan.delinquency_as_of
    if not loan.days_past_due or reckoned is None or reckoned > as_of:
        return None
    return loan.days_past_due + (as_of - reckoned).days


def restate_history(loan: Loan, position: LoanPosition, as_of: date) -> None:
    """After the close's replay rewrote a loan's history (a back-dated book's first close
    charges fees on their graces' nights, which the payments after them pay first, so
    installments settle later), what a payment's reckoning reads from the history: the day
    the loan first went past 30 days (vintages); for a loan past due, its spell and the cure
    before it; for one stored current, its last cure, from which the close's delinquency step
    dates the relapse when it moves the loan out of current. The bucket and status are that
    step's. Read from what the closes had stored, such a loan was 30+ and relapsed only where
    nightly closes of the same history made it so (a tester's: vintages and `cure_relapse`)."""
    due = _history(position, as_of)
    tolerance = tolerance_minor(loan.currency)
    loan.ever_30_plus_on = first_past_30(as_of, due, tolerance)
    # The delinquency step moves a loan stored current as of this date or before out of
    # current with a spell from its last cure. A loan stored as of a later date (booked before
    # the first close, of an earlier date) it only restates: its spell is the history's, not
    # the one its booking read from payments that had not paid the fees first (a
    # re-verifier's: a relapse the loan's twin never had).
    onwards = loan.delinquency_as_of is None or loan.delinquency_as_of <= as_of
    moved_by_the_step = onwards and loan.bucket == Bucket.CURRENT
    if moved_by_the_step or not onwards:
        loan.cured_on = last_cure(as_of, due, tolerance)
    past_due = days_past_due(as_of, [installment for installment, _ in due], tolerance) > 0
    if past_due and not moved_by_the_step:
        loan.relapsed_on, loan.relapse_cured_on = spell_past_due(as_of, due, tolerance)


def _history(position: LoanPosition, as_of: date) -> list[tuple[DueInstallment, date | None]]:
    """Each installment as due on ``as_of`` and the day it stopped counting as missed."""
    return [
        (DueInstallment(i.seq, i.terms.due_date, i.left(as_of)), i.missed_until)
        for i in position.installments
    ]


@dataclass(frozen=True)
class DelinquencyChange:
    """A loan whose bucket or status moved: what ``loan.delinquency_changed`` carries."""

    loan_id: str
    borrower_id: str
    merchant_id: str
    currency: str
    principal_outstanding_minor: int
    as_of: date
    days_past_due: int
    previous_bucket: str
    bucket: str
    previous_status: str
    status: str
    # The loan seen as of an earlier date than it was shown at (booked before the first close
    # or after the dates closed so far): no move in time, a cure nobody paid for.
    restated: bool = False

    def event(self) -> dict[str, Any]:
        return {
            "type": "loan.delinquency_changed",
            "loan_id": self.loan_id,
            "data": {
                "loan_id": self.loan_id,
                "borrower_id": self.borrower_id,
                "merchant_id": self.merchant_id,
                "as_of": self.as_of.isoformat(),
                "restated": self.restated,
                "days_past_due": self.days_past_due,
                "previous_bucket": self.previous_bucket,
                "bucket": self.bucket,
                "bucket_label": Bucket(self.bucket).label,
                "previous_status": self.previous_status,
                "status": self.status,
                "currency": self.currency,
                "principal_outstanding": format_minor(
                    self.principal_outstanding_minor, self.currency
                ),
            },
        }


def _installment_event(
    type_: str, loan_id: str, seq: int, due_date: date, facts: Any, **fields: Any
) -> dict[str, Any]:
    return {
        "type": type_,
        "loan_id": loan_id,
        "data": {
            "loan_id": loan_id,
            "borrower_id": facts.borrower_id,
            "merchant_id": facts.merchant_id,
            "installment_seq": seq,
            "due_date": due_date.isoformat(),
            "currency": facts.currency,
            **fields,
        },
    }


# -- the set-based steps of the close ----------------------------------------------------


def unpaid_sql(as_of: ColumnElement[date]) -> ColumnElement[int]:
    """What is unpaid on each installment as of the date ``as_of`` (a bound date or column).

    The paid columns add up every applied payment, also those received after ``as_of``: a
    catch-up closes days before payments already recorded, and the nightly close meets today's
    payments when it closes yesterday. Their allocations are added back, looked up only for
    the installments of loans with such a payment (few: a day or so of payments, found by the
    index on ``received_on``), so the rest of the book costs one hashed set probe a row."""
    return unpaid_now_sql() + paid_after_sql(as_of)


@cache
def unpaid_as_of_sql() -> ColumnElement[int]:
    """``unpaid_sql`` as of the bound parameter ``as_of`` (``AS_OF``)."""
    return unpaid_sql(AS_OF)


@cache
def unpaid_now_sql() -> ColumnElement[int]:
    """What is unpaid on each installment after every applied payment, whatever its date."""
    i = _installment.c
    return (
        i.principal_minor + i.interest_minor + i.fees_minor + i.late_fees_minor
        - i.paid_principal_minor - i.paid_interest_minor - i.paid_fees_minor
        - i.interest_waived_minor - i.fees_waived_minor
    )  # fmt: skip


def paid_after_sql(as_of: ColumnElement[date]) -> ColumnElement[int]:
    """What applied payments received after ``as_of`` (a bound date) paid on each
    installment."""
    i = _installment.c
    payment = _paid_later
    later = and_(payment.c.received_on > as_of, payment.c.status == PaymentStatus.APPLIED.value)
    payers = select(payment.c.loan_id).where(later).correlate(None)
    return case((i.loan_id.in_(payers), _paid_after_each(as_of)), else_=0)


def unpaid_each_sql(as_of: ColumnElement[date]) -> ColumnElement[int]:
    """``unpaid_sql`` with its look-up made for each installment: ``as_of`` may be an
    expression over the statement's columns (the installment's due date, its product's grace),
    which ``unpaid_sql``'s one set of paying loans cannot be. For the few rows it is needed."""
    return unpaid_now_sql() + _paid_after_each(as_of)


def _paid_after_each(as_of: ColumnElement[date]) -> ScalarSelect[int]:
    """``paid_after_sql`` looked up for each installment, ``as_of`` a date or an expression
    over the columns of the statement it is in (the installment's, its product's)."""
    i = _installment.c
    payment, allocation = _paid_later, _paid_later_to
    later = and_(payment.c.received_on > as_of, payment.c.status == PaymentStatus.APPLIED.value)
    return (
        select(
            # PostgreSQL sums BIGINTs into NUMERIC: the unpaid amounts stay whole minor units.
            sql_cast(
                func.coalesce(
                    func.sum(
                        allocation.c.fees_minor
                        + allocation.c.interest_minor
                        + allocation.c.principal_minor
                    ),
                    0,
                ),
                BigInteger,
            )
        )
        .select_from(allocation.join(payment, payment.c.id == allocation.c.payment_id))
        .where(allocation.c.loan_id == i.loan_id, allocation.c.installment_seq == i.seq, later)
        .correlate_except(payment, allocation)
        .scalar_subquery()
    )


def tolerance_sql(tolerance: Decimal | None = None) -> ColumnElement[int]:
    """The arrears tolerance (the setting's, unless given: a statement built once takes it as
    part of its cache key) in each loan's own minor units."""
    return _tolerance_sql(
        get_settings().close.arrears_tolerance if tolerance is None else tolerance
    )


@lru_cache(maxsize=8)
def _tolerance_sql(tolerance: Decimal) -> ColumnElement[int]:
    by_digits: dict[int, list[str]] = {}
    for currency, digits in MINOR_DIGITS.items():
        by_digits.setdefault(digits, []).append(currency)
    return case(
        *[
            (_loan.c.currency.in_(codes), literal(setting_to_minor(tolerance, codes[0])))
            for digits, codes in sorted(by_digits.items())
        ],
        else_=literal(setting_to_minor(tolerance, "CNY")),
    )


def chunk_params(as_of: date, low: str | None, high: str | None) -> dict[str, Any]:
    """The parameters of a statement built with ``AS_OF`` and ``in_chunk``."""
    return {"as_of": as_of, "low": low, "high": high}


def in_chunk(column: Any, has_low: bool, has_high: bool) -> ColumnElement[bool]:
    """``in_range`` over the bound parameters ``low`` and ``high`` (``chunk_params``)."""
    return in_range(column, bindparam("low") if has_low else None,
                    bindparam("high") if has_high else None)  # fmt: skip


def in_range(column: Any, low: Any, high: Any) -> ColumnElement[bool]:
    """``low <= column < high``, each bound left out when None (values or bound parameters)."""
    conditions = []
    if low is not None:
        conditions.append(column >= low)
    if high is not None:
        conditions.append(column < high)
    return and_(*conditions) if conditions else literal(True)


@lru_cache(maxsize=4)
def _lock_statement(has_low: bool, has_high: bool) -> Any:
    return (
        select(_loan.c.id)
        .where(in_chunk(_loan.c.id, has_low, has_high), _loan.c.status.in_(OPEN_STATUSES))
        .with_for_update()
    )


@lru_cache(maxsize=4)
def _lock_paid_off_unjudged(has_low: bool, has_high: bool) -> Any:
    loan = _loan.c
    return (
        select(loan.id)
        .where(in_chunk(loan.id, has_low, has_high), _paid_off_unjudged(loan))
        .with_for_update()
    )


async def lock_chunk(session: AsyncSession, low: str | None, high: str | None) -> None:
    """Lock the chunk's open loans so payments wait for the step instead of racing it."""
    await session.execute(
        _lock_statement(low is not None, high is not None), {"low": low, "high": high}
    )


async def _loan_facts(session: AsyncSession, loan_ids: Sequence[str]) -> dict[str, Any]:
    rows = await session.execute(
        select(
            _loan.c.id,
            _loan.c.borrower_id,
            _loan.c.merchant_id,
            _loan.c.currency,
            _loan.c.principal_outstanding_minor,
        ).where(_loan.c.id.in_(sorted(set(loan_ids))))
    )
    return {row.id: row for row in rows}


@lru_cache(maxsize=16)
def _late_fees_statement(
    has_low: bool, has_high: bool, tolerance: Decimal, of_loans: bool = False
) -> Any:
    """The update charging the fees: of the chunk's loans, or with ``of_loans`` of the loans
    bound as ``loan_ids``."""
    i, loan, product = _installment.c, _loan.c, _product.c
    if of_loans:
        loan_ids: Any = bindparam("loan_ids", expanding=True)
        which = and_(i.loan_id.in_(loan_ids), loan.id.in_(loan_ids))
    else:
        # The same range on the loan side, or PostgreSQL scans every loan per chunk.
        which = and_(in_chunk(i.loan_id, has_low, has_high), in_chunk(loan.id, has_low, has_high))
    # Judged on the last day of grace, by the close of that day: a payment received the day
    # after is late (before the twenty-seventh session the close of the day after charged it,
    # counting that day's payments, so a fee came only a day past grace + 1). An installment
    # settled by then needs no look-up; one whose grace ends on the date closed is judged as
    # the other steps judge that date (a set probe for the loans paid since); the rest (an
    # older grace: a back-dated booking, a residual within the tolerance) one by one.
    judged_on = add_days(i.due_date, product.grace_days)
    settled_in_time = and_(i.paid_on.is_not(None), i.paid_on <= judged_on)
    # A grace an earlier close of the loan already judged owing nothing, then left owing by a
    # change since (a reversal, whose replay moves every later payment back an installment),
    # owes the fee only while it is still unpaid: judged again by its grace, one bounce charged
    # every installment the later payments had settled late, and their fees, each counted
    # missed from its due date, charged the loan off overnight (a tester's).
    judged_before = and_(judged_on <= _JUDGED_THROUGH, loan.created_at < _JUDGED_SINCE)
    # A fee counts from the night that charged it (allocation: a payment received that day or
    # later pays it first). A grace no close judged yet (a back-dated book's first close, a loan
    # booked back-dated since the last) is charged on its own night, as closes run each night
    # would have; dated on the close's, the payments between did not pay it, and a loan they
    # had settled showed its installments missed and its fees unpaid (a re-verifier's: 92 days
    # past due and defaulted where nightly closes left it current). One a change since left
    # owing is charged the night the close meets it: the payments between were judged then.
    assessed_on = case((judged_before, AS_OF), else_=judged_on)
    unpaid = case(
        (settled_in_time, 0),
        (
            or_(days_between(AS_OF, i.due_date) == product.grace_days, judged_before),
            unpaid_as_of_sql(),
        ),
        else_=unpaid_each_sql(judged_on),
    )
    # Each installment past its grace is judged once, in two materialized steps: PostgreSQL
    # evaluates an expression's subqueries at every place a statement names it, and the fee
    # (its cap, its percent, the condition that there is one) named the lateness up to six
    # times an installment.
    owing = (
        select(
            i.loan_id, i.seq, i.due_date, assessed_on.label("assessed_on"),
            unpaid.label("unpaid"), tolerance_sql(tolerance).label("tolerance"),
            product.late_fee_kind, product.late_fee_amount_minor, product.late_fee_percent,
            product.late_fee_cap_minor,
        )
        .where(
            i.loan_id == loan.id,
            loan.product_code == product.code,
            which,
            _charged(loan),
            i.late_fee_assessed_on.is_(None),
            product.late_fee_kind.is_not(None),
            days_between(AS_OF, i.due_date) >= product.grace_days,
        )
        .cte("owing")
        .prefix_with("MATERIALIZED")
    )  # fmt: skip
    o = owing.c
    # No fee on an installment paid in full in time but for the late fees of older ones
    # (pyramiding; the FTC's Credit Practices Rule forbids it): only what the payments received
    # by its grace fell short of the installments due by then, late fees aside, is late. The
    # payments pay those fees first, so a borrower who paid one installment late and each
    # since in full and on time was charged a fee every month until the loan ended.
    # Looked up only for an installment left owing (nearly every one past grace is settled).
    shortfall = _due_through_sql(o.loan_id, o.due_date) - _paid_by_sql(o.loan_id, o.assessed_on)
    late = (
        select(
            o.loan_id, o.seq, o.assessed_on, o.tolerance, least(o.unpaid, shortfall).label("late"),
            o.late_fee_kind, o.late_fee_amount_minor, o.late_fee_percent, o.late_fee_cap_minor,
        )
        .where(o.unpaid > o.tolerance)
        .cte("late")
        .prefix_with("MATERIALIZED")
    )  # fmt: skip
    lt = late.c
    # Integer arithmetic, half up, as rules.late_fee_minor (SQLAlchemy's / is true division).
    percent_fee = (lt.late * type_coerce(lt.late_fee_percent, BigInteger) + 500_000) // 1_000_000
    fee = case((lt.late_fee_kind == "fixed", lt.late_fee_amount_minor), else_=percent_fee)
    capped = case(
        (and_(lt.late_fee_cap_minor.is_not(None), lt.late_fee_cap_minor < fee),
         lt.late_fee_cap_minor),
        else_=fee,
    )  # fmt: skip
    return (
        update(_installment)
        .where(i.loan_id == lt.loan_id, i.seq == lt.seq, lt.late > lt.tolerance, capped > 0)
        .values(late_fees_minor=i.late_fees_minor + capped, late_fee_assessed_on=lt.assessed_on)
        .returning(i.loan_id, i.seq, i.due_date, i.late_fees_minor, i.late_fee_assessed_on)
    )


def _due_through_sql(loan_id: ColumnElement[str], due_date: ColumnElement[date]) -> Any:
    """What the installment's loan (``loan_id``, due on ``due_date``) has due by its due date,
    late fees aside: the principal, interest and scheduled fees of its installments due by
    then, less the scheduled fees waived (a waiver forgives late fees first; the late fees
    withdrawn, also in ``fees_waived_minor``, are not told apart here, so a scheduled fee
    waived beside them still counts as due)."""
    earlier = _installment.alias("due_earlier").c
    waived_beyond_late = case(
        (earlier.fees_waived_minor > earlier.late_fees_minor,
         earlier.fees_waived_minor - earlier.late_fees_minor),
        else_=0,
    )  # fmt: skip
    due = earlier.principal_minor + earlier.interest_minor + earlier.fees_minor - waived_beyond_late
    return (
        select(sql_cast(func.coalesce(func.sum(due), 0), BigInteger))
        .where(earlier.loan_id == loan_id, earlier.due_date <= due_date)
        .scalar_subquery()
    )


def _paid_by_sql(loan_id: ColumnElement[str], day: ColumnElement[date]) -> Any:
    """What the loan ``loan_id`` was paid by ``day``."""
    payment = _payment.alias("paid_by").c
    return (
        select(sql_cast(func.coalesce(func.sum(payment.amount_minor), 0), BigInteger))
        .where(
            payment.loan_id == loan_id,
            payment.received_on <= day,
            payment.status == PaymentStatus.APPLIED.value,
        )
        .scalar_subquery()
    )


# The last close that judged the book's graces up to the date: the date's own earlier run, or
# the date before.
_LAST_CLOSE = (
    select(CloseRun.as_of, CloseRun.started_at, CloseRun.succeeded_at)
    .where(CloseRun.as_of <= AS_OF, CloseRun.succeeded_at.is_not(None))
    .order_by(CloseRun.as_of.desc())
    .limit(1)
)


async def charge_late_fees(
    session: AsyncSession,
    as_of: date,
    low: str | None,
    high: str | None,
    loan_ids: Sequence[str] | None = None,
) -> list[Any]:
    """Charge each installment that owed more than the arrears tolerance after its last day of
    grace (``rules.late_fee_judged_on``) its product's late fee, once, at the close of that
    day (or the first after it, dated on that day unless a close judged it before): the fees
    charged (loan_id, seq, due_date, late_fees_minor, late_fee_assessed_on). With
    ``loan_ids``, of those loans of the chunk only (locked already)."""
    has_low, has_high = low is not None, high is not None
    statement = _late_fees_statement(
        has_low, has_high, get_settings().close.arrears_tolerance, loan_ids is not None
    )
    last = (await session.execute(_LAST_CLOSE, {"as_of": as_of})).first()
    params: dict[str, Any] = {"judged_through": None, "judged_since": None}
    if last is not None:
        # A rerun of the date: its earlier run judged the loans booked before it succeeded
        # (this attempt's start is now; the date before had not seen a loan booked since: a
        # re-verifier's, the bounce's fees back on a rerun).
        since = last.succeeded_at if last.as_of == as_of else last.started_at
        params |= {"judged_through": last.as_of, "judged_since": since}
    params |= chunk_params(as_of, low, high)
    if loan_ids is None:
        # The chunk's lock took its open loans; a paid-off one the step may reopen waits too.
        await session.execute(_lock_paid_off_unjudged(has_low, has_high), params)
    else:
        params["loan_ids"] = list(loan_ids)
    fees = (await session.execute(statement, params)).all()
    # RETURNING comes in no set order: the ledger rows and events go by loan and installment,
    # as a reader of a loan's transactions expects (installment 2 before 1 failed a test once).
    return sorted(fees, key=lambda fee: (fee.loan_id, fee.seq))


async def book_late_fees(session: AsyncSession, fees: Sequence[Any]) -> None:
    """A ledger ``late_fee`` row for each fee charged, effective on the night it counts from."""
    if not fees:
        return
    currency = {row.id: row.currency for row in await session.execute(
        select(_loan.c.id, _loan.c.currency).where(_loan.c.id.in_({f.loan_id for f in fees}))
    )}  # fmt: skip
    now = utc_now()
    await insert_rows(
        session,
        cast(Table, LedgerTransaction.__table__),
        [
            {
                "loan_id": f.loan_id,
                "kind": TransactionKind.LATE_FEE,
                "amount_minor": f.late_fees_minor,
                "currency": currency[f.loan_id],
                "effective_on": f.late_fee_assessed_on,
                "installment_seq": f.seq,
                "note": None,
                "payment_id": None,
                "created_at": now,
            }
            for f in fees
        ],
    )


async def announce_late_fees(session: AsyncSession, fees: Sequence[Any], as_of: date) -> Counts:
    """``loan.late_fee_assessed`` for each fee charge_late_fees charged, with the loan's
    principal outstanding as the close leaves it: a payment already received on the fee's
    date pays the fee first when replayed, so less of it is left for principal. ``as_of``: the
    date closed; ``effective_on``: the night the fee counts from, the ledger row's date."""
    if not fees:
        return {"late_fees_assessed": 0}
    facts = await _loan_facts(session, [f.loan_id for f in fees])
    await events.emit_many(
        session,
        [
            _installment_event(
                "loan.late_fee_assessed",
                f.loan_id,
                f.seq,
                f.due_date,
                facts[f.loan_id],
                amount=format_minor(f.late_fees_minor, facts[f.loan_id].currency),
                as_of=as_of.isoformat(),
                effective_on=f.late_fee_assessed_on.isoformat(),
                principal_outstanding=format_minor(
                    facts[f.loan_id].principal_outstanding_minor, facts[f.loan_id].currency
                ),
            )
            for f in fees
        ],
    )
    # Summed per currency: minor units of two currencies do not add up.
    charged: Counter[str] = Counter()
    for f in fees:
        charged[f"late_fees_minor_{facts[f.loan_id].currency}"] += f.late_fees_minor
    return {"late_fees_assessed": len(fees), **charged}


def _delinquency_per_loan(has_low: bool, has_high: bool, tolerance: Decimal) -> Any:
    i, loan = _installment.c, _loan.c
    oldest_missed = func.min(
        case((and_(i.due_date < AS_OF, unpaid_as_of_sql() > tolerance_sql(tolerance)), i.due_date))
    )
    return (
        select(i.loan_id.label("loan_id"), oldest_missed.label("oldest_missed"))
        .select_from(_installment.join(_loan, loan.id == i.loan_id))
        .where(
            in_chunk(i.loan_id, has_low, has_high),
            in_chunk(loan.id, has_low, has_high),
            loan.status.in_(OPEN_STATUSES),
            # Not a loan disbursed after the date (booked back-dated while the closes are
            # behind): as of a day before it existed it has no delinquency to report.
            loan.disbursed_on <= AS_OF,
        )
        .group_by(i.loan_id)
        .subquery("per_loan")
    )


def _new_values(per_loan: Any, charge_off: int) -> tuple[Any, Any, Any]:
    dpd = func.coalesce(days_between(AS_OF, per_loan.c.oldest_missed), 0)
    status = case(
        (_loan.c.status.not_in(DELINQUENCY_STATUSES), _loan.c.status),
        else_=status_by_days_sql(dpd, charge_off),
    )
    return dpd, bucket_sql(dpd), status


def bucket_sql(dpd: ColumnElement[int]) -> ColumnElement[str]:
    return case(
        (dpd <= 0, Bucket.CURRENT.value),
        (dpd <= 30, Bucket.DPD_1_30.value),
        (dpd <= 60, Bucket.DPD_31_60.value),
        (dpd <= 90, Bucket.DPD_61_90.value),
        else_=Bucket.DPD_90_PLUS.value,
    )


def status_by_days_sql(dpd: ColumnElement[int], charge_off: int) -> ColumnElement[str]:
    """``status_for`` in SQL, of the loan in the statement (``_loan``)."""
    return case(
        (
            dpd <= 0,
            case(
                (_loan.c.restructured_on.is_not(None), LoanStatus.RESTRUCTURED.value),
                else_=LoanStatus.ACTIVE.value,
            ),
        ),
        (dpd <= 90, LoanStatus.DELINQUENT.value),
        (dpd <= charge_off, LoanStatus.DEFAULTED.value),
        else_=LoanStatus.CHARGED_OFF.value,
    )


def days_past_due_sql(tolerance: Decimal) -> ScalarSelect[int]:
    """The days past due as of ``AS_OF`` of the loan in the statement (``_loan``), looked up
    for it alone: for the few loans the delinquency step does not judge."""
    i = _installment.c
    missed = and_(i.due_date < AS_OF, unpaid_as_of_sql() > tolerance_sql(tolerance))
    return (
        select(func.coalesce(days_between(AS_OF, func.min(i.due_date)), 0))
        .where(i.loan_id == _loan.c.id, missed)
        .correlate(_loan)
        .scalar_subquery()
    )


def principal_paid_after_sql() -> ColumnElement[int]:
    """The principal that applied payments received after ``AS_OF`` paid on the loan in the
    statement (``_loan``): a look-up only for a loan with such a payment (a day or so of them,
    found by the index on ``received_on``), one hashed set probe for the rest."""
    payment, allocation = _paid_later, _paid_later_to
    later = and_(payment.c.received_on > AS_OF, payment.c.status == PaymentStatus.APPLIED.value)
    payers = select(payment.c.loan_id).where(later).correlate(None)
    paid = (
        select(sql_cast(func.coalesce(func.sum(allocation.c.principal_minor), 0), BigInteger))
        .select_from(allocation.join(payment, payment.c.id == allocation.c.payment_id))
        .where(allocation.c.loan_id == _loan.c.id, later)
        .correlate(_loan)
        .scalar_subquery()
    )
    return case((_loan.c.id.in_(payers), paid), else_=0)


def _never_reckoned() -> Any:
    """Whether no close before this one has reckoned the loan: none of a date from its
    disbursement on has started since it was booked (a loan booked back-dated after the last
    close, of a date after its disbursement, is no more reckoned than one booked before the
    first). After the cheaper tests of a condition, so that few loans look it up."""
    loan = _loan.c
    return ~exists().where(
        CloseRun.succeeded_at.is_not(None),
        CloseRun.as_of < AS_OF,
        CloseRun.as_of >= loan.disbursed_on,
        CloseRun.started_at > loan.created_at,
    )


@lru_cache(maxsize=32)
def _delinquency_statements(
    has_low: bool, has_high: bool, postgres: bool, charge_off: int, tolerance: Decimal
) -> tuple[Any, Any | None]:
    """The update of the chunk's loans, and on SQLite the select of their changes to run
    before it."""
    loan = _loan.c
    per_loan = _delinquency_per_loan(has_low, has_high, tolerance)
    dpd, bucket, status = _new_values(per_loan, charge_off)
    moved = or_(bucket != loan.bucket, status != loan.status)
    onwards = or_(loan.delinquency_as_of.is_(None), loan.delinquency_as_of <= AS_OF)
    went_past_30 = add_days(per_loan.c.oldest_missed, PAST_30_DAYS + 1)
    first_day_past_due = add_days(per_loan.c.oldest_missed, 1)
    relapses = and_(
        bucket != Bucket.CURRENT.value,
        loan.bucket == Bucket.CURRENT.value,
        onwards,
        or_(loan.cured_on.is_(None), first_day_past_due > loan.cured_on),
    )
    # An earlier day than the one stored, too: a payment recorded before the close that
    # charged a fee it then paid first reckoned the loan settled at the time (vintages).
    newly_past_30 = and_(
        dpd > PAST_30_DAYS,
        or_(loan.ever_30_plus_on.is_(None), loan.ever_30_plus_on > went_past_30),
    )
    update_loans = (
        update(_loan)
        .where(
            loan.id == per_loan.c.loan_id,
            in_chunk(loan.id, has_low, has_high),
            # The loan's own row, which PostgreSQL checks again when the statement waited on
            # it: a loan a reversal reopened after the chunk's lock, and paid off again while
            # the statement ran, took the bucket read before the payoff (a tester's).
            loan.status.in_(OPEN_STATUSES),
            # A loan stored as of a later date (booked before the first close, which may be
            # for an earlier date) takes the close's date even when nothing moved: its next
            # move is then one in time (a roll, a cure), not the same loan seen earlier.
            or_(dpd != loan.days_past_due, moved, newly_past_30, loan.delinquency_as_of > AS_OF),
        )
        .values(
            days_past_due=dpd,
            bucket=bucket,
            status=status,
            delinquency_as_of=AS_OF,
            # SET reads the row as it was: remember the bucket left and the day of a cure
            # (not when the row was evaluated as of a later date: see apply_delinquency). A
            # loan no close has reckoned, moved or seen as of an earlier date, is compared
            # with its origination: the buckets its booking and payments read, without the
            # fees this close may charge, are not where it was at a previous close (a tester's:
            # paid short and late, a loan 31-60 on the date was no roll, its unpaid twin one).
            previous_bucket=case(
                (
                    and_(or_(bucket != loan.bucket, not_(onwards)), _never_reckoned()),
                    Bucket.CURRENT.value,
                ),
                (and_(bucket != loan.bucket, onwards), loan.bucket),
                else_=loan.previous_bucket,
            ),
            cured_on=case(
                (
                    and_(
                        bucket == Bucket.CURRENT.value,
                        loan.bucket != Bucket.CURRENT.value,
                        onwards,
                    ),
                    AS_OF,
                ),
                else_=loan.cured_on,
            ),
            # A current loan past due again starts a spell after its last cure; one past due
            # from before that cure (a payment recorded during the close, set back) goes on
            # with the spell it had (rules.spell_past_due reads the same from the history).
            relapsed_on=case((relapses, first_day_past_due), else_=loan.relapsed_on),
            relapse_cured_on=case((relapses, loan.cured_on), else_=loan.relapse_cured_on),
            # The day it went past 30, wherever the close catches it (late loans booked with
            # past dates, a missed close).
            ever_30_plus_on=case(
                (newly_past_30, went_past_30),
                else_=loan.ever_30_plus_on,
            ),
        )
    )
    reported = (loan.id, loan.borrower_id, loan.merchant_id, loan.currency,
                loan.principal_outstanding_minor)  # fmt: skip
    if postgres:
        # One pass over the installments: RETURNING reads the old bucket and status from the
        # row as the statement found it (a self-join), the new ones from the row written.
        before = _loan.alias("before")
        returning = update_loans.where(
            before.c.id == loan.id, in_chunk(before.c.id, has_low, has_high)
        ).returning(
            *reported,
            before.c.bucket,
            before.c.status,
            loan.days_past_due,
            loan.bucket.label("new_bucket"),
            loan.status.label("new_status"),
            _days_moved(before.c, loan.days_past_due).label("days_moved"),
            _restated(before.c).label("restated"),
        )
        return returning, None
    # SQLite's RETURNING cannot read the FROM side: the changes first, then the update.
    changes = (
        select(
            *reported,
            loan.bucket,
            loan.status,
            dpd.label("days_past_due"),
            bucket.label("new_bucket"),
            status.label("new_status"),
            _days_moved(loan, dpd).label("days_moved"),
            _restated(loan).label("restated"),
        )
        .select_from(_loan.join(per_loan, per_loan.c.loan_id == loan.id))
        .where(or_(moved, _days_moved(loan, dpd)), in_chunk(loan.id, has_low, has_high))
    )
    return update_loans, changes


def _restated(before: Any) -> Any:
    """Whether the close sees a loan no close has reckoned yet (booked before the first close,
    which may be for an earlier date, or disbursed after the dates closed so far) as of an
    earlier date than it is stored at: no move in time, announced as ``restated`` (a tester
    heard a delinquent loan cure, a charged-off one default again; kept silent, the next event
    named a previous status no event had told: two testers'). One a close reckoned before and
    a payment during this close (or its catch-up) reckoned as of a later date is set back:
    that is a move, as when the payment came before the close."""
    return and_(before.delinquency_as_of > AS_OF, _never_reckoned())


def _days_moved(before: Any, dpd: Any) -> Any:
    """Whether a loan past due, and still, has ``dpd`` days past due as of the date closed
    otherwise than the days since it was reckoned make of its stored ones: a payment recorded
    as of a later date, which the close of this date does not count, set back (a subscriber
    adding the days since the last event was a month out: a re-verifier's)."""
    grown = before.days_past_due + days_between(AS_OF, before.delinquency_as_of)
    return and_(
        before.days_past_due > 0,
        dpd > 0,
        before.delinquency_as_of.is_not(None),
        dpd != grown,
    )


async def recompute_delinquency(
    session: AsyncSession, as_of: date, low: str | None, high: str | None
) -> Counts:
    """Days past due, bucket and status of every open loan in the range, as of ``as_of``;
    ``loan.delinquency_changed`` for each loan whose bucket or status moves, or whose days
    past due move otherwise than a day a day."""
    settings = get_settings().close
    update_loans, select_changes = _delinquency_statements(
        low is not None, high is not None, is_postgres(session),
        settings.charge_off_after_days, settings.arrears_tolerance,
    )  # fmt: skip
    params = chunk_params(as_of, low, high)
    if select_changes is None:
        updated = (await session.execute(update_loans, params)).all()
        changes: Sequence[Any] = [
            row for row in updated
            if (row.bucket, row.status) != (row.new_bucket, row.new_status) or row.days_moved
        ]  # fmt: skip
        loans_updated = len(updated)
    else:
        changes = (await session.execute(select_changes, params)).all()
        loans_updated = await execute_counting(session, update_loans, params)
    await events.emit_many(
        session,
        [
            DelinquencyChange(
                c.id,
                c.borrower_id,
                c.merchant_id,
                c.currency,
                c.principal_outstanding_minor,
                as_of,
                c.days_past_due,
                c.bucket,
                c.new_bucket,
                c.status,
                c.new_status,
                restated=bool(c.restated),
            ).event()
            for c in changes
        ],
    )
    return {"loans_updated": loans_updated, "delinquency_changes": len(changes)}


@lru_cache(maxsize=8)
def _reminder_statements(has_low: bool, has_high: bool) -> tuple[Any, Any]:
    """Mark reminded as of ``as_of`` the installments due after it, up to ``due_on``, that no
    close has reminded yet; then read what is due on them."""
    i, loan = _installment.c, _loan.c
    due_on = bindparam("due_on", type_=Date)
    unpaid = unpaid_as_of_sql()
    remind = (
        update(_installment)
        .where(
            i.loan_id == loan.id,
            in_chunk(i.loan_id, has_low, has_high),
            loan.status.in_(OPEN_STATUSES),
            loan.disbursed_on <= AS_OF,  # a date before the loan is none of its business
            # A window, not the one day ``reminder_days`` ahead: an installment a loan already
            # had inside it when it first met a close (booked with a near first due date, or
            # a book's first close) is reminded at that close rather than never.
            i.due_date > AS_OF,
            i.due_date <= due_on,
            i.reminded_on.is_(None),
            unpaid > 0,
        )
        .values(reminded_on=AS_OF)
        .returning(i.loan_id, i.seq, i.due_date)
    )
    # Read apart: SQLite's RETURNING drops the table from column names, and the subquery of
    # the payments received later then compares its own columns.
    amounts = select(i.loan_id, i.seq, unpaid).where(
        in_chunk(i.loan_id, has_low, has_high),
        i.due_date > AS_OF,
        i.due_date <= due_on,
        i.reminded_on == AS_OF,
    )
    return remind, amounts


async def send_reminders(
    session: AsyncSession, as_of: date, low: str | None, high: str | None
) -> Counts:
    """``installment.due_soon`` for installments due within ``reminder_days`` after ``as_of``,
    once each."""
    remind, amounts_due = _reminder_statements(low is not None, high is not None)
    due_on = as_of + timedelta(days=get_settings().close.reminder_days)
    params = {**chunk_params(as_of, low, high), "due_on": due_on}
    reminded = (await session.execute(remind, params)).all()
    if not reminded:
        return {"reminders_sent": 0}
    amounts = await session.execute(amounts_due, params)
    amount_due = {(loan_id, seq): amount for loan_id, seq, amount in amounts}
    facts = await _loan_facts(session, [r.loan_id for r in reminded])
    await events.emit_many(
        session,
        [
            _installment_event(
                "installment.due_soon",
                r.loan_id,
                r.seq,
                r.due_date,
                facts[r.loan_id],
                amount_due=format_minor(amount_due[r.loan_id, r.seq], facts[r.loan_id].currency),
                days_until_due=(r.due_date - as_of).days,
                # The date closed: a catch-up's reminder is sent after it (a subscriber
                # messaging borrowers skips one whose due date has passed since).
                as_of=as_of.isoformat(),
            )
            for r in sorted(reminded, key=lambda r: (r.loan_id, r.seq))
        ],
    )
    return {"reminders_sent": len(reminded)}
