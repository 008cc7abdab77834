"""A synthetic portfolio for demos and benchmarks (``loanwatch demo --loans N``).

One merchant, three products, one borrower per three loans and ``N`` loans disbursed evenly over
the 365 days before the as-of date, with their installments, payments, allocations and ledger
rows, in the state the API would have left them in as of that date:

- most loans are current: every installment due by the as-of date was paid on or a few days
  before its due date (a few of those payments bounced, were reversed and paid again), and a
  few have prepaid part of the next installment;
- some stopped paying, so that their oldest missed installment is 1-30, 31-90 or more than 90
  days past due; some of those paid part of it, and some paid it with a payment that bounced;
- some were paid off early (the waterfall's payoff: later periods' interest waived), and loans
  whose term has run out are paid off.

Amounts and due dates come from ``loans/schedule.py``; the payments are allocated as
``payments/allocation.py`` would (fees, interest, principal, oldest due first), so the ledger
invariant holds per loan (payments - reversals == what installments were paid; no credit
balance) and ``principal_outstanding_minor`` is the unpaid principal. Delinquency is left as a
fresh loan's (0 days, ``current``, ``active``) and no late fee is assessed or reminder sent: the
close computes them. The outbox is not written (the loans' history events are not replayed).

Generation is pure (``PortfolioPlan.batch``, deterministic in ``seed``); ``generate`` writes it
batch by batch — COPY on PostgreSQL, executemany on SQLite — so memory stays flat in ``N``.
"""

import asyncio
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, cast

from dateutil.relativedelta import relativedelta
from sqlalchemy import Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app import clock
from app.borrowers.limits import initial_credit_limit
from app.borrowers.models import Borrower
from app.borrowers.service import limit_policy
from app.db import Rate, database, session_scope, utc_now
from app.ids import new_id
from app.ledger.models import LedgerTransaction, TransactionKind
from app.loans.models import InstallmentStatus, Loan, LoanInstallment, LoanStatus
from app.loans.schedule import (
    Amortization,
    ScheduleTerms,
    build_schedule,
    default_first_due_date,
    due_dates,
)
from app.merchants.models import Merchant
from app.money import Rounding
from app.payments.models import Payment, PaymentAllocation, PaymentStatus, ReversalReason
from app.portfolio import positions
from app.products.models import Product

Row = tuple[Any, ...]

CURRENCY = "CNY"
DAYS_BACK = 365
DEFAULT_BATCH_LOANS = 10_000
LOANS_PER_BORROWER = 3


@dataclass(frozen=True)
class DemoProduct:
    code: str
    name: str
    amortization: Amortization
    annual_rate: Decimal
    term: int
    grace_days: int
    late_fee_kind: str | None
    late_fee_amount_minor: int | None
    late_fee_percent: Decimal | None
    late_fee_cap_minor: int | None
    share: float  # of the loans


PRODUCTS = (
    DemoProduct("DEMO-TV12", "Appliances, 12 months", Amortization.EQUAL_INSTALLMENT,
                Decimal("0.1299"), 12, 3, "fixed", 25_00, None, None, 0.70),
    DemoProduct("DEMO-ZERO6", "0 % promotion, 6 months", Amortization.INTEREST_FREE,
                Decimal(0), 6, 3, None, None, None, None, 0.15),
    DemoProduct("DEMO-EP24", "Large appliances, 24 months", Amortization.EQUAL_PRINCIPAL,
                Decimal("0.0999"), 24, 5, "percent", None, Decimal("0.05"), 50_00, 0.15),
)  # fmt: skip


@dataclass(frozen=True)
class Mix:
    """How loans behave; the shares of the outcomes sum to at most 1, the rest are current.

    A delinquent or paid-off outcome a loan is too young for (no installment due long enough
    ago, nothing left to pay off) falls back to current, so the realised shares of the late
    buckets come out somewhat lower than asked for.
    """

    dpd_1_30: float = 0.10
    dpd_31_90: float = 0.08
    dpd_90_plus: float = 0.06
    paid_off_early: float = 0.06
    # Of current loans: one on-time payment bounced and was paid again; the next installment
    # part prepaid.
    bounced_and_repaid: float = 0.03
    prepaid_part: float = 0.05
    # Of late loans: the oldest missed installment part paid / paid by a payment that bounced.
    late_part_paid: float = 0.30
    late_bounced: float = 0.25


# Outcomes, as counted in the summary.
CURRENT, DPD_1_30, DPD_31_90, DPD_90_PLUS = "current", "dpd_1_30", "dpd_31_90", "dpd_90_plus"
PAID_OFF_EARLY, PAID_OFF_AT_TERM = "paid_off_early", "paid_off_at_term"
PARTIAL, BOUNCED = "with_partial_installment", "with_reversed_payment"

_LATE_RANGES = {DPD_1_30: (1, 30), DPD_31_90: (31, 90), DPD_90_PLUS: (91, DAYS_BACK)}

# Column orders of the rows below (those of the tables; the ledger's id is generated).
BORROWER_COLUMNS = tuple(
    (
        "id merchant_id external_id name phone currency monthly_income_minor credit_limit_minor "
        "risk_grade created_at"
    ).split()
)
LOAN_COLUMNS = tuple(
    (
        "id borrower_id merchant_id product_code currency principal_minor annual_interest_rate "
        "amortization rounding term disbursed_on first_due_date merchant_order_ref status "
        "principal_outstanding_minor credit_balance_minor refund_due_minor days_past_due bucket "
        "delinquency_as_of paid_off_on cancelled_on created_at updated_at"
    ).split()
)
INSTALLMENT_COLUMNS = tuple(
    (
        "loan_id seq due_date principal_minor interest_minor fees_minor late_fees_minor "
        "paid_principal_minor paid_interest_minor paid_fees_minor interest_waived_minor "
        "fees_waived_minor paid_on settled_on status late_fee_assessed_on reminded_on"
    ).split()
)
PAYMENT_COLUMNS = tuple(
    (
        "id loan_id amount_minor received_on channel external_ref status reversal_reason "
        "reversed_at reversed_on created_at"
    ).split()
)
ALLOCATION_COLUMNS = tuple(
    "payment_id installment_seq loan_id fees_minor interest_minor principal_minor".split()
)
LEDGER_COLUMNS = tuple(
    (
        "loan_id kind amount_minor currency effective_on payment_id installment_seq note created_at"
    ).split()
)

_CHANNELS = ("pos", "bank_transfer", "wechat_pay", "alipay")
# How long before its due date an on-time payment arrives (most on the day).
_EARLY = tuple(timedelta(days=d) for d in (0, 0, 0, 1, 2, 3, 5))


# -- ids ----------------------------------------------------------------------------------

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Two digits (10 bits) at a time: 13 lookups spell the 130 bits of 26 digits.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = tuple(range(120, -1, -10))


def encode_id(prefix: str, value: int) -> str:
    """The 128-bit ``value`` as ``app.ids.new_id`` spells it: 26 Crockford digits."""
    pairs = _PAIRS
    return prefix + "_" + "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])


class Ids:
    """Ids in ``new_id``'s layout (48-bit milliseconds, 80 more bits), stamped with the time of
    the event they name and increasing in generation order within a millisecond; 40 bits of a
    per-run nonce keep two runs apart."""

    def __init__(self, nonce: int) -> None:
        self._nonce = nonce & _LOW40
        self._counter = 0

    def make(self, prefix: str, at_ms: int) -> str:
        self._counter += 1
        # The counter keeps ids unique and ordered within a run; the nonce, mixed in, keeps runs
        # apart (XOR with it is one-to-one for a given counter).
        low = (self._counter * 0x9E3779B97F4A7C15 ^ self._nonce) & _LOW40
        return encode_id(prefix, at_ms << 80 | self._counter << 40 | low)


_LOW40 = 2**40 - 1


@lru_cache(maxsize=4096)
def _instants(day: date) -> tuple[int, datetime, datetime]:
    """Epoch milliseconds of ``day`` 02:00 UTC (when its payments are stamped), that instant, and
    03:00 (its reversals)."""
    at = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
    return int(at.timestamp() * 1000), at, at + timedelta(hours=1)


# -- the pure part: a plan and its batches ---------------------------------------------------


@dataclass
class Batch:
    borrowers: list[Row] = field(default_factory=list)
    loans: list[Row] = field(default_factory=list)
    installments: list[Row] = field(default_factory=list)
    payments: list[Row] = field(default_factory=list)
    allocations: list[Row] = field(default_factory=list)
    ledger: list[Row] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def tables(self) -> list[tuple[Table, Sequence[str], list[Row]]]:
        """In foreign-key order."""
        return [
            (_table(Borrower), BORROWER_COLUMNS, self.borrowers),
            (_table(Loan), LOAN_COLUMNS, self.loans),
            (_table(LoanInstallment), INSTALLMENT_COLUMNS, self.installments),
            (_table(Payment), PAYMENT_COLUMNS, self.payments),
            (_table(PaymentAllocation), ALLOCATION_COLUMNS, self.allocations),
            (_table(LedgerTransaction), LEDGER_COLUMNS, self.ledger),
        ]


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


@dataclass
class _Installment:
    seq: int
    due_date: date
    principal: int
    interest: int
    fees: int
    paid_principal: int = 0
    paid_interest: int = 0
    paid_fees: int = 0
    interest_waived: int = 0
    paid_on: date | None = None

    @property
    def left(self) -> int:
        return (
            self.principal + self.interest + self.fees - self.paid_principal
            - self.paid_interest - self.paid_fees - self.interest_waived
        )  # fmt: skip


class _LoanBuilder:
    """One loan's payments, applied the way the allocation waterfall applies them."""

    def __init__(self, plan: "PortfolioPlan", batch: Batch, loan_id: str, disbursed_on: date,
                 installments: list[_Installment]) -> None:  # fmt: skip
        self.plan, self.batch, self.loan_id = plan, batch, loan_id
        self.disbursed_on = disbursed_on
        self.installments = installments
        self.last_received: date | None = None

    def _payment(self, amount: int, received_on: date, rng: random.Random,
                 reversed_on: date | None = None) -> str:  # fmt: skip
        at_ms, created, _ = _instants(received_on)
        payment_id = self.plan.ids.make("pay", at_ms)
        reversed_at = None if reversed_on is None else _instants(reversed_on)[2]
        self.batch.payments.append((
            payment_id, self.loan_id, amount, received_on,
            _CHANNELS[int(rng.random() * len(_CHANNELS))], f"rcpt-{payment_id[4:]}",
            PaymentStatus.APPLIED if reversed_on is None else PaymentStatus.REVERSED,
            None if reversed_on is None else ReversalReason.NSF, reversed_at, reversed_on, created,
        ))  # fmt: skip
        self.batch.ledger.append((self.loan_id, TransactionKind.PAYMENT, amount, CURRENCY,
                                  received_on, payment_id, None, None, created))  # fmt: skip
        if reversed_on is not None and reversed_at is not None:
            self.batch.ledger.append((self.loan_id, TransactionKind.REVERSAL, amount, CURRENCY,
                                      reversed_on, payment_id, None, ReversalReason.NSF,
                                      reversed_at))  # fmt: skip
        else:
            self.last_received = received_on
        return payment_id

    def _allocate(self, payment_id: str, inst: _Installment, amount: int, day: date) -> int:
        """Fees, then interest, then principal of one installment; returns what is left."""
        fees = min(amount, inst.fees - inst.paid_fees)
        interest = min(amount - fees, inst.interest - inst.paid_interest - inst.interest_waived)
        principal = min(amount - fees - interest, inst.principal - inst.paid_principal)
        if fees or interest or principal:
            inst.paid_fees += fees
            inst.paid_interest += interest
            inst.paid_principal += principal
            self.batch.allocations.append(
                (payment_id, inst.seq, self.loan_id, fees, interest, principal)
            )
        if inst.paid_on is None and inst.left == 0:
            inst.paid_on = day
        return amount - fees - interest - principal

    def period_start(self, inst: _Installment) -> date:
        """The first day on which ``inst`` is the current period's installment: a payment
        before it would pay only its principal (the waterfall's rule for periods not begun)."""
        return self.installments[inst.seq - 2].due_date if inst.seq > 1 else self.disbursed_on

    def pay(self, inst: _Installment, amount: int, day: date, rng: random.Random) -> None:
        """A payment of at most what ``inst`` owes, every earlier installment being settled and
        ``inst`` due or the current period's: the waterfall puts all of it on ``inst``."""
        payment_id = self._payment(amount, day, rng)
        left = self._allocate(payment_id, inst, amount, day)
        assert left == 0

    def bounce(self, amount: int, day: date, reversed_on: date, rng: random.Random) -> None:
        """A payment later reversed: a replay leaves no allocation of it."""
        self._payment(amount, day, rng, reversed_on)

    def pay_off(self, day: date, rng: random.Random) -> None:
        """The payoff on ``day`` (every installment due by then settled): the current period in
        full, the scheduled fee and principal of later ones, their interest waived."""
        current = next(i for i in self.installments if i.due_date > day)
        later = [i for i in self.installments if i.seq > current.seq]
        for inst in later:
            inst.interest_waived = inst.interest - inst.paid_interest
        amount = current.left + sum(i.left for i in later)
        payment_id = self._payment(amount, day, rng)
        for inst in [current, *later]:
            amount = self._allocate(payment_id, inst, amount, day)
        assert amount == 0


class PortfolioPlan:
    """Everything a batch needs; ``batch(start, stop)`` makes loans ``start`` to ``stop - 1``.
    Deterministic in ``seed`` (and the batch bounds), except the ids' run nonce."""

    def __init__(self, *, loans: int, as_of: date, seed: int, merchant_id: str,
                 mix: Mix | None = None, nonce: int | None = None) -> None:  # fmt: skip
        self.loans, self.as_of, self.seed, self.merchant_id = loans, as_of, seed, merchant_id
        self.mix = mix or Mix()
        self.ids = Ids(secrets.randbits(40) if nonce is None else nonce)
        self.first_day = as_of - timedelta(days=DAYS_BACK)
        self._first_ms = _instants(self.first_day)[0] - 2 * 3_600_000  # midnight UTC
        self._policy = limit_policy(CURRENCY)
        self._weights = [p.share for p in PRODUCTS]
        self._parts: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        self._dates: dict[tuple[date, int], list[date]] = {}

    def _schedule(
        self, product: DemoProduct, principal: int, disbursed_on: date
    ) -> list[_Installment]:
        parts = self._parts.get((product.code, principal))
        if parts is None:
            terms = ScheduleTerms(principal_minor=principal, annual_rate=product.annual_rate,
                                  term=product.term, amortization=product.amortization,
                                  rounding=Rounding.HALF_EVEN)  # fmt: skip
            # The amounts do not depend on the dates: build once per product and principal.
            schedule = build_schedule(terms, default_first_due_date(disbursed_on))
            parts = [(s.principal_minor, s.interest_minor, s.fees_minor) for s in schedule]
            self._parts[(product.code, principal)] = parts
        dates = self._dates.get((disbursed_on, product.term))
        if dates is None:
            first = default_first_due_date(disbursed_on)
            dates = due_dates(first, product.term, disbursed_on.day)
            self._dates[(disbursed_on, product.term)] = dates
        return [
            _Installment(seq, due, principal_part, interest, fees)
            for seq, (due, (principal_part, interest, fees)) in enumerate(
                zip(dates, parts, strict=True), start=1
            )
        ]

    def batch(self, start: int, stop: int) -> Batch:
        """Loans ``start`` to ``stop - 1`` with their borrowers (``start`` a multiple of
        LOANS_PER_BORROWER, so that no borrower straddles two batches)."""
        assert start % LOANS_PER_BORROWER == 0
        assert 0 <= start <= stop <= self.loans
        rng = random.Random(f"{self.seed}:{start}")
        batch = Batch()
        borrower_id = ""
        for n in range(start, stop):
            # Loans are disbursed evenly over the year before the as-of date, in id order.
            offset_ms = n * DAYS_BACK * 86_400_000 // self.loans
            disbursed_on = self.first_day + timedelta(days=offset_ms // 86_400_000)
            at_ms = self._first_ms + offset_ms
            created = datetime.fromtimestamp(at_ms / 1000, UTC)
            if n % LOANS_PER_BORROWER == 0:
                borrower_id = self.ids.make("bor", at_ms)
                self._borrower(batch, rng, borrower_id, n, created)
            self._loan(batch, rng, n, borrower_id, disbursed_on, at_ms, created)
        return batch

    def _borrower(self, batch: Batch, rng: random.Random, borrower_id: str, n: int,
                  created: datetime) -> None:  # fmt: skip
        income = rng.randrange(12_000, 40_001, 100) * 100
        batch.borrowers.append((
            borrower_id, self.merchant_id, f"demo-{self.seed}-{n // LOANS_PER_BORROWER}",
            f"Demo Borrower {n // LOANS_PER_BORROWER}", f"+86138{rng.randrange(10**8):08d}",
            CURRENCY, income, initial_credit_limit(self._policy, income), "A", created,
        ))  # fmt: skip

    def _loan(self, batch: Batch, rng: random.Random, n: int, borrower_id: str,
              disbursed_on: date, at_ms: int, created: datetime) -> None:  # fmt: skip
        product = rng.choices(PRODUCTS, self._weights)[0]
        principal = rng.randrange(500, 12_001, 50) * 100
        loan_id = self.ids.make("loan", at_ms)
        installments = self._schedule(product, principal, disbursed_on)
        builder = _LoanBuilder(self, batch, loan_id, disbursed_on, installments)
        batch.ledger.append((loan_id, TransactionKind.DISBURSEMENT, principal, CURRENCY,
                             disbursed_on, None, None, None, created))  # fmt: skip
        outcome = self._behave(builder, rng)
        batch.outcomes[outcome] += 1

        paid_off = all(i.left == 0 for i in installments)
        if paid_off and outcome == CURRENT:
            batch.outcomes[CURRENT] -= 1
            batch.outcomes[PAID_OFF_AT_TERM] += 1
        outstanding = 0
        for i in installments:
            outstanding += i.principal - i.paid_principal
            paid = i.paid_principal + i.paid_interest + i.paid_fees
            status = (
                InstallmentStatus.PAID if i.paid_on is not None
                else InstallmentStatus.PARTIALLY_PAID if paid
                else InstallmentStatus.PENDING
            )  # fmt: skip
            batch.installments.append((
                loan_id, i.seq, i.due_date, i.principal, i.interest, i.fees, 0, i.paid_principal,
                # Settled when paid: what the demo leaves unpaid is well above the tolerance.
                i.paid_interest, i.paid_fees, i.interest_waived, 0, i.paid_on, i.paid_on,
                status, None, None,
            ))  # fmt: skip
        batch.loans.append((
            loan_id, borrower_id, self.merchant_id, product.code, CURRENCY, principal,
            int(product.annual_rate * Rate.SCALE), product.amortization, Rounding.HALF_EVEN,
            product.term, disbursed_on, installments[0].due_date, f"DEMO-{loan_id[5:]}",
            LoanStatus.PAID_OFF if paid_off else LoanStatus.ACTIVE, outstanding, 0, 0, 0,
            "current", None, builder.last_received if paid_off else None, None, created, created,
        ))  # fmt: skip

    def _behave(self, loan: _LoanBuilder, rng: random.Random) -> str:
        """Record the loan's payments up to the as-of date; return its outcome."""
        mix, as_of = self.mix, self.as_of
        installments = loan.installments
        draw = rng.random()
        outcome = CURRENT
        for name, share in (
            (DPD_1_30, mix.dpd_1_30),
            (DPD_31_90, mix.dpd_31_90),
            (DPD_90_PLUS, mix.dpd_90_plus),
            (PAID_OFF_EARLY, mix.paid_off_early),
        ):
            if draw < share:
                outcome = name
                break
            draw -= share  # fmt: skip

        if outcome in _LATE_RANGES:
            low, high = _LATE_RANGES[outcome]
            late = [i for i in installments if low <= (as_of - i.due_date).days <= high]
            if late:
                missed = rng.choice(late)
                for inst in installments[: missed.seq - 1]:
                    self._pay_on_time(loan, inst, rng)
                self._miss(loan, missed, rng)
                return outcome
            outcome = CURRENT
        if outcome == PAID_OFF_EARLY:
            earliest = loan.disbursed_on + timedelta(days=15)
            latest = min(as_of - timedelta(days=1), installments[-1].due_date - timedelta(days=1))
            if earliest <= latest:
                day = earliest + timedelta(days=rng.randrange((latest - earliest).days + 1))
                for inst in installments:
                    if inst.due_date <= day:
                        self._pay_on_time(loan, inst, rng, latest=day)
                loan.pay_off(day, rng)
                return outcome
            outcome = CURRENT

        due = [i for i in installments if i.due_date <= as_of]
        settled_early = [i for i in due if i.due_date <= as_of - timedelta(days=12)]
        bounced = None
        if settled_early and rng.random() < mix.bounced_and_repaid:
            bounced = rng.choice(settled_early)
        for inst in due:
            if inst is bounced:
                day = self._on_time_day(loan, inst, rng)
                back = day + timedelta(days=rng.randint(2, 5))
                loan.bounce(inst.left, day, back, rng)
                loan.pay(inst, inst.left, back + timedelta(days=rng.randint(0, 3)), rng)
            else:
                self._pay_on_time(loan, inst, rng)
        upcoming = installments[len(due)] if len(due) < len(installments) else None
        if upcoming is not None and rng.random() < mix.prepaid_part:
            earliest = max(loan.last_received or loan.disbursed_on, as_of - timedelta(days=20),
                           loan.disbursed_on + timedelta(days=1),
                           loan.period_start(upcoming))  # fmt: skip
            day = earliest + timedelta(days=rng.randrange((as_of - earliest).days + 1))
            part = upcoming.left * rng.randint(20, 80) // 100
            if part > 0:
                loan.pay(upcoming, part, day, rng)
                loan.batch.outcomes[PARTIAL] += 1
        if bounced is not None:
            loan.batch.outcomes[BOUNCED] += 1
        return CURRENT

    def _on_time_day(self, loan: _LoanBuilder, inst: _Installment, rng: random.Random,
                     latest: date | None = None) -> date:  # fmt: skip
        day = inst.due_date - _EARLY[int(rng.random() * len(_EARLY))]
        floor = max(loan.last_received or loan.disbursed_on, loan.disbursed_on + timedelta(1),
                    loan.period_start(inst))  # fmt: skip
        return min(max(day, floor), latest or day)

    def _pay_on_time(self, loan: _LoanBuilder, inst: _Installment, rng: random.Random,
                     latest: date | None = None) -> None:  # fmt: skip
        loan.pay(inst, inst.left, self._on_time_day(loan, inst, rng, latest), rng)

    def _miss(self, loan: _LoanBuilder, missed: _Installment, rng: random.Random) -> None:
        """The oldest missed installment: unpaid, part paid, or paid by a bounced payment."""
        draw = rng.random()
        if draw < self.mix.late_part_paid:
            # Well above the arrears tolerance stays unpaid.
            part = min(missed.left * rng.randint(20, 80) // 100, missed.left - 500)
            if part > 0:
                window = (self.as_of - missed.due_date).days
                day = missed.due_date + timedelta(days=rng.randrange(min(window, 25) + 1))
                day = max(day, loan.last_received or day)
                loan.pay(missed, part, day, rng)
                loan.batch.outcomes[PARTIAL] += 1
        elif draw < self.mix.late_part_paid + self.mix.late_bounced:
            day = self._on_time_day(loan, missed, rng)
            back = min(day + timedelta(days=rng.randint(2, 10)), self.as_of)
            loan.bounce(missed.left, day, back, rng)
            loan.batch.outcomes[BOUNCED] += 1


# -- I/O ----------------------------------------------------------------------------------------


@dataclass
class DemoSummary:
    database: str
    as_of: date
    seed: int
    merchant_id: str
    loans: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def describe(self) -> str:
        rows = ", ".join(f"{name} {count:,}" for name, count in self.rows.items())
        outcomes = ", ".join(f"{name} {count:,}" for name, count in sorted(self.outcomes.items()))
        return (
            f"generated {self.loans:,} loans as of {self.as_of} (seed {self.seed}, merchant "
            f"{self.merchant_id}) into {self.database} in {self.seconds:.1f} s "
            f"({self.loans / max(self.seconds, 1e-9):,.0f} loans/s)\n"
            f"rows: {rows}\noutcomes: {outcomes}"
        )


def product_rows() -> list[dict[str, Any]]:
    now = utc_now()
    return [
        {
            "code": p.code, "name": p.name, "currency": CURRENCY,
            "annual_interest_rate": p.annual_rate, "amortization": p.amortization,
            "term_options": [p.term], "rounding": Rounding.HALF_EVEN,
            "installment_multiple_of_minor": None, "grace_days": p.grace_days,
            "late_fee_kind": p.late_fee_kind, "late_fee_amount_minor": p.late_fee_amount_minor,
            "late_fee_percent": p.late_fee_percent, "late_fee_cap_minor": p.late_fee_cap_minor,
            "origination_fee_kind": None, "origination_fee_amount_minor": None,
            "origination_fee_percent": None, "origination_fee_collection": None,
            "created_at": now,
        }
        for p in PRODUCTS
    ]  # fmt: skip


async def _setup(conn: AsyncConnection, merchant_id: str) -> None:
    """The merchant, and the products unless an earlier run made them."""
    await conn.execute(
        insert(Merchant).values(id=merchant_id, name="Demo Appliances", created_at=utc_now())
    )
    existing = set(await conn.scalars(select(Product.code)))
    missing = [row for row in product_rows() if row["code"] not in existing]
    if missing:
        await conn.execute(insert(Product), missing)


async def _write_postgres(conn: AsyncConnection, batch: Batch, *, skip_fk_checks: bool) -> None:
    if skip_fk_checks:
        # The rows are consistent by construction (tests/test_demo.py checks them with the
        # checks on); the per-row foreign-key triggers would make the COPY about 3x slower.
        # What pg_restore --disable-triggers does; only a superuser may.
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
    else:
        await conn.execute(text("SELECT 1"))  # opens the transaction the COPY joins
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    for table, columns, rows in batch.tables():
        if rows:
            await driver.copy_records_to_table(table.name, records=rows, columns=list(columns))


async def _write_sqlite(conn: AsyncConnection, batch: Batch) -> None:
    rate = list(LOAN_COLUMNS).index("annual_interest_rate")
    for table, columns, rows in batch.tables():
        if not rows:
            continue
        if table.name == "loan":  # the Rate type binds a Decimal
            rows = [(*r[:rate], Decimal(r[rate]) / Rate.SCALE, *r[rate + 1 :]) for r in rows]
        await conn.execute(insert(table), [dict(zip(columns, r, strict=True)) for r in rows])


def _batches(loans: int, size: int) -> Iterator[tuple[int, int]]:
    """Bounds on whole borrowers (multiples of LOANS_PER_BORROWER)."""
    size = max(size // LOANS_PER_BORROWER, 1) * LOANS_PER_BORROWER
    for start in range(0, loans, size):
        yield start, min(start + size, loans)


def refuse_as_of(as_of: date) -> None:
    """A date the book cannot be as of: after today, or before the oldest date the API books
    a loan on (a book of 1900 was generated, which no close could then be run over)."""
    if as_of > (today := clock.today()):
        raise ValueError(f"as_of {as_of} is after today ({today})")
    if as_of < (earliest := clock.earliest()):
        raise ValueError(f"as_of {as_of} is before {earliest}, ten years back")


async def generate(
    loans: int,
    *,
    as_of: date | None = None,
    seed: int = 1,
    batch_loans: int = DEFAULT_BATCH_LOANS,
    mix: Mix | None = None,
    check_foreign_keys: bool = False,
) -> DemoSummary:
    """Generate the portfolio into the configured database (already migrated).

    On PostgreSQL as a superuser, foreign keys are not checked row by row unless
    ``check_foreign_keys``; otherwise they always are."""
    if loans < 1:
        raise ValueError("loans must be at least 1")
    as_of = as_of or clock.today()
    refuse_as_of(as_of)
    started = time.perf_counter()
    engine = database.engine
    postgres = engine.dialect.name == "postgresql"
    merchant_id = new_id("mer")
    plan = PortfolioPlan(loans=loans, as_of=as_of, seed=seed, merchant_id=merchant_id, mix=mix)
    summary = DemoSummary(engine.url.render_as_string(hide_password=True), as_of, seed,
                          merchant_id)  # fmt: skip
    async with engine.begin() as conn:
        await _setup(conn, merchant_id)
        skip_fk_checks = (
            postgres
            and not check_foreign_keys
            and await conn.scalar(text("SELECT current_setting('is_superuser')")) == "on"
        )
    bounds = list(_batches(loans, batch_loans))
    # Generate the next batch in a thread while the current one is written: the database's
    # work overlaps Python's.
    pending = asyncio.create_task(asyncio.to_thread(plan.batch, *bounds[0]))
    for n in range(len(bounds)):
        batch = await pending
        if n + 1 < len(bounds):
            pending = asyncio.create_task(asyncio.to_thread(plan.batch, *bounds[n + 1]))
        async with engine.begin() as conn:
            if postgres:
                await _write_postgres(conn, batch, skip_fk_checks=skip_fk_checks)
            else:
                await _write_sqlite(conn, batch)
        summary.loans += len(batch.loans)
        for table, _, rows in batch.tables():
            summary.rows[table.name] += len(rows)
        summary.outcomes.update(batch.outcomes)
        del batch
    async with session_scope() as session:
        # The dashboards' running totals: the rows went in bulk, past the deltas a request
        # writes, and the summary showed no loan until a close (a tester's).
        since = as_of.replace(day=1) - relativedelta(months=1)
        await positions.rebase(session, collections_since=since)
    if postgres:  # fresh statistics for the close's plans
        async with engine.begin() as conn:
            for table, _, _ in Batch().tables():
                await conn.execute(text(f"ANALYZE {table.name}"))
    summary.seconds = time.perf_counter() - started
    return summary


async def run_demo(loans: int, *, as_of: date | None, seed: int) -> DemoSummary:
    """``generate`` for the CLI: disposes of the engine afterwards."""
    try:
        return await generate(loans, as_of=as_of, seed=seed)
    finally:
        await database.dispose()
