"""Origination, reads and cancellation of loans."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar, cast

from sqlalchemy import BigInteger, Table, bindparam, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.borrowers import service as borrowers_service
from app.db import Rate, database, insert_together, utc_now
from app.delinquency import service as delinquency
from app.errors import FieldErrors, Forbidden, InvalidRequest
from app.events import service as events
from app.ids import new_id
from app.ledger import service as ledger
from app.ledger.models import LedgerTransaction, TransactionKind
from app.loans.errors import (
    CreditLimitExceeded,
    CurrencyMismatch,
    DuplicateMerchantOrderRef,
    LoanNotActive,
    LoanNotFound,
)
from app.loans.models import OPEN_STATUSES, InstallmentStatus, Loan, LoanInstallment, LoanStatus
from app.loans.records import (
    InstallmentFields,
    InstallmentRecord,
    LoanFields,
    LoanRecord,
    owed_minor,
    paid_minor,
)
from app.loans.schedule import (
    Amortization,
    FeeCollection,
    InstallmentsDoNotFit,
    ScheduleTerms,
    build_schedule,
    default_first_due_date,
    first_period_days,
)
from app.money import Rounding, format_minor, parse_amount
from app.payments.allocation import InstallmentPosition, InstallmentTerms, LateFee, LoanPosition
from app.portfolio import positions
from app.products import service as products_service
from app.promises import service as promises
from app.risk import limits as grade_limits
from app.risk import service as risk
from app.risk.models import FlagStatus, RiskFlag

_L = TypeVar("_L", bound=LoanFields)

# A first due date further out than this is a data-entry error, not a promotion.
MAX_FIRST_DUE_DAYS = 92
# Principal a loan lends per installment at least, in minor units (1.00 CNY, 100 JPY, 0.100
# KWD): below it rounding leaves installments that repay nothing (0.25 over 35 months paid
# only a spread fee for 34 of them) or repay the loan before its last one.
MIN_PRINCIPAL_PER_INSTALLMENT = 100

# The reads of every GET and origination, built once: a statement built per call is compiled
# from the cache, but its construction and cache key cost CPU on each request.
_INSTALLMENTS_OF_LOAN = (
    select(LoanInstallment)
    .where(LoanInstallment.loan_id == bindparam("loan_id"))
    .order_by(LoanInstallment.seq)
)
_loans = cast(Table, Loan.__table__)
_installments = cast(Table, LoanInstallment.__table__)
# The rate as stored, in parts per million, for the read below: the same on both databases.
_RATE_PPM = type_coerce(_loans.c.annual_interest_rate, BigInteger).label("annual_interest_rate")
# The loan, its installments and the business date in one round trip (a row per
# installment), as plain columns: the busiest read, on the driver (Database.read_rows).
_LOAN_READ = (
    select(
        *(_RATE_PPM if name == _RATE_PPM.name else _loans.c[name] for name in LoanRecord._fields),
        *(_installments.c[name] for name in InstallmentRecord._fields),
        delinquency.business_date_column(),
    )
    .select_from(_loans.outerjoin(_installments, _installments.c.loan_id == _loans.c.id))
    .where(_loans.c.id == bindparam("loan_id"))
    .order_by(_installments.c.seq)
)
_LOAN_END = len(LoanRecord._fields)
_INSTALLMENT_END = _LOAN_END + len(InstallmentRecord._fields)
_LOAN_KEYS = tuple(column.key for column in _loans.columns)
_ledger = cast(Table, LedgerTransaction.__table__)
# The installment column a new schedule leaves empty that no rendering reads.
_NOT_REMINDED = {"reminded_on": None}
# The borrower's exposure, whether the order reference is taken, and the business date: one
# round trip of origination.
_ORIGINATION_CHECKS = select(
    borrowers_service.exposure_column(),
    select(Loan.id)
    .where(
        Loan.merchant_id == bindparam("merchant_id"), Loan.merchant_order_ref == bindparam("ref")
    )
    .scalar_subquery(),
    delinquency.business_date_column(),
)


@dataclass(frozen=True)
class LoanView:
    """A loan with its installments. Arrears (overdue amounts, installment statuses) are shown
    as of the same date as days past due — the business date, or the later date a payment
    received after it reckoned the loan as of; what it takes to pay the loan off, as of
    today."""

    loan: LoanFields
    installments: Sequence[InstallmentFields]
    today: date
    business_date: date | None

    @property
    def arrears_as_of(self) -> date:
        reckoned = self.loan.delinquency_as_of
        now = self.business_date or self.today
        return max(now, reckoned) if reckoned else now

    @property
    def delinquency_as_of(self) -> date | None:
        """Every close evaluates every open loan, so an open loan's delinquency is as of the
        business date even where the close found nothing to change."""
        stored = self.loan.delinquency_as_of
        if self.business_date is None or self.loan.status not in OPEN_STATUSES:
            return stored
        return max(stored or self.business_date, self.business_date)

    @property
    def position(self) -> LoanPosition:
        return position_of(self.installments)

    def payoff_minor(self, position: LoanPosition) -> int:
        """What settles the loan today (``payoff_on``), from the position the caller has."""
        return payoff_on(self.installments, self.today, position)

    def installment_status(self, installment: InstallmentFields) -> InstallmentStatus:
        stored = InstallmentStatus(installment.status)
        # A late fee assessed after the installment was settled (a back-dated payment) leaves
        # it owing again: paid only while nothing is left.
        if stored is InstallmentStatus.PAID and owed_minor(installment) == paid_minor(installment):
            return stored
        # A cancelled loan owes nothing: what it had not paid is not overdue, only unpaid.
        cancelled = self.loan.status == LoanStatus.CANCELLED
        if installment.due_date < self.arrears_as_of and not cancelled:
            return InstallmentStatus.OVERDUE
        return InstallmentStatus.PARTIALLY_PAID if stored is InstallmentStatus.PAID else stored


async def loan_view(
    session: AsyncSession, loan: Loan, installments: list[LoanInstallment] | None = None
) -> LoanView:
    if installments is None:
        installments = await load_installments(session, loan.id)
    return LoanView(loan, installments, clock.today(), await delinquency.business_date(session))


def payoff_on(
    installments: Sequence[InstallmentFields], day: date, position: LoanPosition | None = None
) -> int:
    """What a payment received on ``day`` takes to pay the loan off: its payoff amount that
    day, less the late fees a close of ``day`` charged. That payment counts as received by the
    close, which charges no paid-off loan, so a payoff on ``day`` withdraws them (quoted with
    them, the payment was refused as more than the payoff; a plan or promise of that date was
    allowed the fees on top: a tester's). The arrears quoted keep them: a payment that day
    withdraws a fee only when it was its installment's last day of grace (a fee charged later,
    on a loan booked back-dated, stays). ``position``: the installments', if at hand."""
    charged_that_night = sum(
        max(i.late_fees_minor - i.fees_waived_minor, 0)
        for i in installments
        if i.late_fee_assessed_on == day
    )
    position = position or position_of(installments)
    return position.payoff_minor(day) - charged_that_night


def position_of(installments: Sequence[InstallmentFields]) -> LoanPosition:
    """The stored position: late fees already assessed count as charged on any later date,
    less the fees waived or withdrawn, as never charged."""
    return LoanPosition(
        [
            InstallmentPosition(
                InstallmentTerms(
                    seq=i.seq,
                    due_date=i.due_date,
                    principal_minor=i.principal_minor,
                    interest_minor=i.interest_minor,
                    fees_minor=i.fees_minor,
                    late_fees=(LateFee(date.min, i.late_fees_minor),) if i.late_fees_minor else (),
                ).without_fees(i.fees_waived_minor),
                paid_fees_minor=i.paid_fees_minor,
                paid_interest_minor=i.paid_interest_minor,
                paid_principal_minor=i.paid_principal_minor,
                interest_waived_minor=i.interest_waived_minor,
                paid_on=i.paid_on,
            )
            for i in installments
        ]
    )


def event_data(loan: Loan) -> dict[str, Any]:
    """What loan events carry: enough to act on without a call back, no personal data."""
    return {
        "loan_id": loan.id,
        "borrower_id": loan.borrower_id,
        "merchant_id": loan.merchant_id,
        "product_code": loan.product_code,
        "merchant_order_ref": loan.merchant_order_ref,
        "currency": loan.currency,
        "principal": format_minor(loan.principal_minor, loan.currency),
        "principal_outstanding": format_minor(loan.principal_outstanding_minor, loan.currency),
        "term": loan.term,
        "disbursed_on": loan.disbursed_on.isoformat(),
        "first_due_date": loan.first_due_date.isoformat(),
        "status": loan.status,
        "days_past_due": loan.days_past_due,
        "bucket": loan.bucket,
        # A back-dated payoff or a late-reported return: the date it counts from.
        "paid_off_on": loan.paid_off_on.isoformat() if loan.paid_off_on else None,
        "cancelled_on": loan.cancelled_on.isoformat() if loan.cancelled_on else None,
    }


async def create_loan(
    session: AsyncSession,
    principal: Principal,
    *,
    borrower_id: str,
    product_code: str,
    principal_amount: str,
    term: int,
    disbursed_on: date | None,
    first_due_date: date | None,
    merchant_order_ref: str,
) -> LoanView:
    principal.require(Role.MERCHANT)
    today = clock.today()
    # The borrower's row lock serialises originations against the same credit limit.
    borrower, product = await borrowers_service.lock_borrower_with_product(
        session, principal, borrower_id=borrower_id, product_code=product_code
    )
    if product is not None and product.currency != borrower.currency:
        raise CurrencyMismatch(
            f"product {product.code} lends in {product.currency}; the borrower's limit is in "
            f"{borrower.currency}"
        )
    errors = FieldErrors()
    amount = None
    if product is None:
        errors.add("product_code", f"no product with code {product_code}")
    else:
        if term not in product.term_options:
            errors.add("term", f"product {product.code} offers terms {product.term_options}")
        currency = product.currency
        amount = errors.check(lambda: parse_amount("principal", principal_amount, currency))
        if amount is not None and amount < MIN_PRINCIPAL_PER_INSTALLMENT * term:
            least = format_minor(MIN_PRINCIPAL_PER_INSTALLMENT * term, currency)
            each = format_minor(MIN_PRINCIPAL_PER_INSTALLMENT, currency)
            errors.add(
                "principal", f"must be at least {least} for {term} installments ({each} each)"
            )
    disbursed_on = disbursed_on or today
    # An omitted first due date keeps the disbursement's day of month (Jan 31 -> Feb 28 ->
    # Mar 31); a given one sets the day itself.
    anchor_day = first_due_date.day if first_due_date else disbursed_on.day
    if disbursed_on > today:
        errors.add("disbursed_on", f"must not be after today ({today})")
    if disbursed_on < (earliest := clock.earliest()):
        errors.add("disbursed_on", f"must not be before {earliest}")
    if first_due_date is None:
        # Not from a disbursement after today: a month past 9999-12-01 is no date at all.
        first_due_date = default_first_due_date(min(disbursed_on, today))
    elif not 0 < (first_due_date - disbursed_on).days <= MAX_FIRST_DUE_DAYS:
        errors.add(
            "first_due_date",
            f"must be after disbursed_on and within {MAX_FIRST_DUE_DAYS} days of it",
        )
    errors.raise_any()  # none left: both were found
    assert product is not None
    assert amount is not None

    exposure_sum, taken, business_date = (
        await session.execute(
            _ORIGINATION_CHECKS,
            {
                "borrower_id": borrower.id,
                "merchant_id": borrower.merchant_id,
                "ref": merchant_order_ref,
            },
        )
    ).one()
    if taken is not None:
        # The POS whose answer was lost finds its loan here, or by the same filter on the list;
        # before the limit, which that loan may have used up (a tester's retry was told the
        # limit was exceeded, as if the sale had been refused).
        raise DuplicateMerchantOrderRef(
            f"merchant order {merchant_order_ref} already has loan {taken} at this merchant "
            f"(GET /v1/loans?merchant_order_ref={merchant_order_ref})"
        )
    exposure = int(exposure_sum)
    grade, overridden = borrower.risk_grade, borrower.limit_overridden
    available = grade_limits.available_minor(
        borrower.credit_limit_minor, exposure, grade, overridden
    )
    if amount > available:
        graded = (
            f"; the borrower is graded {grade}, and nothing more is lent until every open "
            "loan of theirs grades C or better or an admin sets their credit limit"
            if grade in grade_limits.LENDS_NOTHING and not overridden else ""
        )  # fmt: skip
        raise CreditLimitExceeded(
            f"principal {format_minor(amount, product.currency)} exceeds the available limit "
            f"{format_minor(available, product.currency)} (credit limit "
            f"{format_minor(borrower.credit_limit_minor, product.currency)}, exposure "
            f"{format_minor(exposure, product.currency)}{graded})"
        )

    terms = ScheduleTerms(
        principal_minor=amount,
        annual_rate=product.annual_interest_rate,
        term=term,
        amortization=Amortization(product.amortization),
        rounding=Rounding(product.rounding),
        installment_multiple_of_minor=product.installment_multiple_of_minor,
        origination_fee_minor=products_service.origination_fee_minor(product, amount),
        fee_collection=FeeCollection(product.origination_fee_collection or FeeCollection.UPFRONT),
        first_period_days=first_period_days(disbursed_on, first_due_date),
    )
    try:
        schedule = build_schedule(terms, first_due_date, anchor_day)
    except InstallmentsDoNotFit:
        multiple = format_minor(product.installment_multiple_of_minor or 0, product.currency)
        raise InvalidRequest.field(
            "principal",
            f"{format_minor(amount, product.currency)} over {term} installments does not fit "
            f"installments in multiples of {multiple}: they would repay it before the last "
            "installment or leave the last larger than the one before; lend more, or over "
            "fewer installments",
        ) from None
    # An installment of 0.00 is no promise to pay: it would be "paid" on its due date by
    # nothing, and count as a settled period to the risk rules.
    empty = [s.seq for s in schedule if s.principal_minor + s.interest_minor + s.fees_minor == 0]
    if empty:
        raise InvalidRequest.field(
            "principal",
            f"{principal_amount} over {term} installments leaves installment {empty[0]} with "
            "nothing to pay: lend more, or over fewer installments",
        )
    now = utc_now()
    loan = Loan(
        id=new_id("loan"),
        borrower_id=borrower.id,
        merchant_id=borrower.merchant_id,
        product_code=product.code,
        currency=product.currency,
        principal_minor=amount,
        annual_interest_rate=product.annual_interest_rate,
        amortization=product.amortization,
        rounding=product.rounding,
        term=term,
        disbursed_on=disbursed_on,
        first_due_date=first_due_date,
        merchant_order_ref=merchant_order_ref,
        status=LoanStatus.ACTIVE,
        principal_outstanding_minor=amount,
        credit_balance_minor=0,
        refund_due_minor=0,
        days_past_due=0,
        bucket="current",
        previous_bucket="current",
        risk_score=1000,
        risk_grade="A",
        created_at=now,
        updated_at=now,
    )
    installments = [
        InstallmentRecord(
            seq=s.seq,
            due_date=s.due_date,
            principal_minor=s.principal_minor,
            interest_minor=s.interest_minor,
            fees_minor=s.fees_minor,
            late_fees_minor=0,
            paid_principal_minor=0,
            paid_interest_minor=0,
            paid_fees_minor=0,
            interest_waived_minor=0,
            fees_waived_minor=0,
            late_fee_assessed_on=None,
            paid_on=None,
            status=InstallmentStatus.PENDING,
        )
        for s in schedule
    ]
    # A back-dated loan is booked with its arrears, set before the INSERT so the row is written
    # once. loan.created tells them as committed: a loan that never was current reports no
    # move out of current (a collections system reads the bucket it was booked in).
    reckoned_on = business_date or today
    delinquency.apply_delinquency(loan, position_of(installments), reckoned_on)
    loan.flags_deferred = loan.days_past_due > 0
    # Core INSERTs, and the loan object is never added to the session: the ORM flush of one
    # loan (unit of work, the portfolio listener's delta object) cost more CPU than every
    # other statement of origination (py-spy, bench/http_load.py); per-row ORM flushes of the
    # installments 5x (DESIGN). A concurrent twin order slipping past the check above fails on
    # the unique constraint here and is answered 409 by the IntegrityError handler.
    await insert_together(
        session,
        (_loans, [{key: getattr(loan, key) for key in _LOAN_KEYS}]),
        positions.new_loan_deltas(loan),
        (
            _installments,
            [{**i._asdict(), **_NOT_REMINDED, "loan_id": loan.id} for i in installments],
        ),
        (
            _ledger,
            [{
                "loan_id": loan.id, "kind": TransactionKind.DISBURSEMENT, "amount_minor": amount,
                "currency": loan.currency, "effective_on": disbursed_on, "created_at": now,
            }],
        ),
    )  # fmt: skip
    # Booked in arrears (back-dated), its days past due count as of this date.
    created = {**event_data(loan), "as_of": reckoned_on.isoformat()}
    await events.emit(session, "loan.created", created, loan=loan)
    return LoanView(loan, installments, today, business_date)


async def get_loan(
    session: AsyncSession, principal: Principal, *, loan_id: str, for_update: bool = False
) -> Loan:
    """The loan if the caller may see it; another merchant's loan does not exist. With
    ``for_update`` the loan's row is locked: every write to a loan goes through here."""
    principal.require(Role.MERCHANT, Role.DASHBOARD)
    query = select(Loan).where(Loan.id == loan_id)
    if for_update:
        # NO KEY UPDATE, as a borrower's lock: writes to one loan still queue, and the close's
        # chunk lock (FOR UPDATE) still waits for them, but the key-share lock of a row the
        # close inserts for the loan (its ledger's foreign key) does not: a payment waiting
        # for an installment the close had charged, while the close waited for the payment's
        # loan lock, was a deadlock, answered 503 (a re-verifier's, during a catch-up).
        query = query.with_for_update(key_share=True)
    return _visible(principal, await session.scalar(query), loan_id)


def _visible(principal: Principal, loan: _L | None, loan_id: str) -> _L:
    if loan is None or not principal.can_see_merchant(loan.merchant_id):
        raise LoanNotFound(f"loan {loan_id} does not exist")
    return loan


async def load_installments(session: AsyncSession, loan_id: str) -> list[LoanInstallment]:
    return list(await session.scalars(_INSTALLMENTS_OF_LOAN, {"loan_id": loan_id}))


async def read_loan(principal: Principal, *, loan_id: str) -> LoanView:
    """The loan and its installments as plain rows (no ORM instances): GET's whole read."""
    principal.require(Role.MERCHANT, Role.DASHBOARD)
    rows = await database.read_rows(_LOAN_READ, {"loan_id": loan_id})
    loan = _visible(principal, _loan_record(rows[0]) if rows else None, loan_id)
    installments = [
        InstallmentRecord._make(row[_LOAN_END:_INSTALLMENT_END])
        for row in rows
        if row[_LOAN_END] is not None
    ]
    return LoanView(loan, installments, clock.today(), rows[0][_INSTALLMENT_END])


def _loan_record(row: Sequence[Any]) -> LoanRecord:
    record = LoanRecord._make(row[:_LOAN_END])
    rate_ppm = cast(int, record.annual_interest_rate)
    return record._replace(annual_interest_rate=Decimal(rate_ppm) / Rate.SCALE)


async def list_loans(
    session: AsyncSession,
    principal: Principal,
    *,
    page: PageParams,
    status: LoanStatus | None = None,
    bucket: str | None = None,
    merchant_id: str | None = None,
    borrower_id: str | None = None,
    flag: str | None = None,
    product_code: str | None = None,
    currency: str | None = None,
    merchant_order_ref: str | None = None,
) -> list[LoanView]:
    principal.require(Role.MERCHANT, Role.DASHBOARD)
    query = select(Loan).order_by(Loan.id).limit(page.limit + 1)
    if principal.is_merchant:
        # As on the portfolio: another merchant's id is a mistake to say so, not an empty page.
        if merchant_id is not None and merchant_id != principal.merchant_id:
            raise Forbidden("a merchant key sees its own merchant's loans only")
        query = query.where(Loan.merchant_id == principal.merchant_id)
    if borrower_id is not None:
        await borrowers_service.get_borrower(session, principal, borrower_id=borrower_id)
        query = query.where(Loan.borrower_id == borrower_id)
    if merchant_id is not None:
        query = query.where(Loan.merchant_id == merchant_id)
    if merchant_order_ref is not None:
        query = query.where(Loan.merchant_order_ref == merchant_order_ref)
    if product_code is not None:
        query = query.where(Loan.product_code == product_code)
    if currency is not None:
        query = query.where(Loan.currency == currency)
    if status is not None:
        query = query.where(Loan.status == status)
    if bucket is not None:
        # Closed loans keep the bucket they closed in; the portfolio summary's buckets count
        # open loans only, and a dashboard drills down from them to this list.
        query = query.where(Loan.bucket == bucket, Loan.status.in_(OPEN_STATUSES))
    if flag is not None:
        query = query.where(
            Loan.id.in_(
                select(RiskFlag.loan_id).where(
                    RiskFlag.status == FlagStatus.OPEN, RiskFlag.code == flag
                )
            )
        )
    if page.after_id:
        query = query.where(Loan.id > page.after_id)
    loans = list(await session.scalars(query))
    installments: dict[str, list[LoanInstallment]] = {loan.id: [] for loan in loans}
    for row in await session.scalars(
        select(LoanInstallment)
        .where(LoanInstallment.loan_id.in_(installments))
        .order_by(LoanInstallment.loan_id, LoanInstallment.seq)
    ):
        installments[row.loan_id].append(row)
    today, business = clock.today(), await delinquency.business_date(session)
    return [LoanView(loan, installments[loan.id], today, business) for loan in loans]


async def cancel_loan(
    session: AsyncSession, principal: Principal, *, loan_id: str, reason: str | None
) -> LoanView:
    """Goods returned: the loan ends. What the borrower paid (net of reversals) is owed back
    to them: ``refund_due``, and any credit balance; the borrower's exposure is released."""
    principal.require(Role.MERCHANT)
    loan = await get_loan(session, principal, loan_id=loan_id, for_update=True)
    if loan.status not in (*OPEN_STATUSES, LoanStatus.PAID_OFF):
        raise LoanNotActive(f"loan {loan.id} is {loan.status}")
    today = clock.today()
    reckoned = await delinquency.reckoning_date(session)
    # What the loan never took (a gateway's debit beyond a payoff) stays its credit balance,
    # owed back beside the refund: both together are every net payment.
    refund = await ledger.net_payments_minor(session, loan.id) - loan.credit_balance_minor
    bucket_before, status_before = loan.bucket, loan.status
    loan.status = LoanStatus.CANCELLED
    loan.cancelled_on = today
    if loan.days_past_due > 0:
        # Its arrears end today as a cure's would: the borrower's time without arrears, which
        # a limit recovery waits for (docs/risk.md), starts now, not at the disbursement.
        loan.cured_on = reckoned
    # A returned purchase owes nothing: it leaves every bucket and arrears view.
    loan.days_past_due, loan.bucket = 0, "current"
    loan.principal_outstanding_minor = 0
    loan.refund_due_minor = refund
    if refund:
        session.add(
            LedgerTransaction(
                loan_id=loan.id, kind=TransactionKind.REFUND, amount_minor=refund,
                currency=loan.currency, effective_on=today, note=reason, created_at=utc_now(),
            )
        )  # fmt: skip
    # Its status moves, from a bucket maybe: announced as a payoff is, before the loan's end
    # (a collections system following these events kept a returned loan in its 90+ queue).
    change = delinquency.DelinquencyChange(
        loan.id, loan.borrower_id, loan.merchant_id, loan.currency, 0, today, 0,
        bucket_before, loan.bucket, status_before, loan.status,
    ).event()  # fmt: skip
    await events.emit(session, change["type"], change["data"], loan=loan)
    await events.emit(
        session,
        "loan.cancelled",
        {
            **event_data(loan),
            "refund_due": format_minor(refund, loan.currency),
            "credit_balance": format_minor(loan.credit_balance_minor, loan.currency),
            "reason": reason,
        },
        loan=loan,
    )
    # Its promises and plan end with it, as a payoff's do, and its flags (a payoff clears
    # them the same way); its borrower's grade no longer counts them.
    await promises.refresh_loan(session, loan, reckoned)
    await risk.refresh_loan(session, loan, reckoned)
    return await loan_view(session, loan)
