"""Repayment schedules: pure functions, no I/O.

Monthly periods on a 30/360 basis: each period's interest is the annual rate / 12 on the
principal outstanding, the first period's by its length (first_period_days). Amounts are
rounded to the minor unit with the product's rounding mode, and the last installment absorbs
every residual so the principal parts sum to the principal.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from enum import StrEnum

from dateutil.relativedelta import relativedelta

from app.money import Rounding, ceil_to_multiple, floor_minor, round_minor

# The terms a product may offer, in months: "a buyer pays in 3 to 36 monthly installments"
# (SPEC). A term extension may take a schedule beyond them, up to MAX_TERM.
OFFERED_TERMS = range(3, 37)
# The longest schedule, in months, after term extensions.
MAX_TERM = 60
# Interest counts days on a 30/360 basis: 30 to a month, 360 to a year.
DAYS_IN_MONTH = 30


class Amortization(StrEnum):
    EQUAL_INSTALLMENT = "equal_installment"
    EQUAL_PRINCIPAL = "equal_principal"
    INTEREST_FREE = "interest_free"


class FeeCollection(StrEnum):
    UPFRONT = "upfront"
    SPREAD = "spread"


@dataclass(frozen=True)
class ScheduleTerms:
    principal_minor: int
    annual_rate: Decimal
    term: int
    amortization: Amortization
    rounding: Rounding = Rounding.HALF_EVEN
    installment_multiple_of_minor: int | None = None
    origination_fee_minor: int = 0
    fee_collection: FeeCollection = FeeCollection.UPFRONT
    # From the disbursement to the first due date, in 30/360 days (first_period_days): a
    # month unless the loan names its own first due date.
    first_period_days: int = DAYS_IN_MONTH


@dataclass(frozen=True)
class ScheduledInstallment:
    seq: int
    due_date: date
    principal_minor: int
    interest_minor: int
    fees_minor: int

    @property
    def total_minor(self) -> int:
        return self.principal_minor + self.interest_minor + self.fees_minor


def due_dates(first_due_date: date, term: int, anchor_day: int | None = None) -> list[date]:
    """Monthly due dates keeping the anchor day of month, clamped at month end
    (Jan 31 -> Feb 28/29 -> Mar 31)."""
    day = anchor_day or first_due_date.day
    return [first_due_date + relativedelta(months=k, day=day) for k in range(term)]


def anchor_day(due: Sequence[date]) -> int:
    """A schedule's anchor day: the largest day of month it uses (a loan anchored on the 31st
    falls due on Feb 28, then Mar 31)."""
    return max(d.day for d in due)


def deferred(due: list[date], after: date, months: int) -> list[date]:
    """The due dates after a payment holiday of ``months`` from ``after``: those still ahead
    move that many months later on the schedule's anchor day (Feb 28 of a loan anchored on the
    31st moves to Mar 31 or Apr 30), the rest stay."""
    anchor = anchor_day(due)
    return [d + relativedelta(months=months, day=anchor) if d > after else d for d in due]


def extended(
    ahead: Sequence[ScheduledInstallment],
    months: int,
    terms: ScheduleTerms,
    anchor: int,
    principal_paid_minor: int = 0,
) -> list[ScheduledInstallment]:
    """A term extension: the principal and the fees of the installments still ahead
    (``ahead``, in seq order) re-amortised over as many installments and ``months`` more, on
    the loan's rate, amortization, rounding and fee collection (``terms``), monthly from the
    first one's due date on the schedule's ``anchor`` day; the seqs continue from the first
    one's. What is already due is not part of it: arrears stay due as they were (nor, by the
    caller's choice, installments whose principal was paid ahead). The first one's period is
    the loan's first period (``terms.first_period_days``) if it is the first installment,
    else a month; its interest is the one the old schedule charged for it.

    ``principal_paid_minor``: the principal already paid on the first one (money paid before
    it was due). It is re-amortised with the rest and the loan's payments, replayed, pay it
    again, so the first installment asks its new amount less it, never more than before.
    Unless it is more than the first installment's new principal: the excess, repaid, would
    bear interest over the longer term. Then the first installment keeps its terms with what
    was paid as its principal, and the principal still owed is re-amortised from the next
    date over the installments after it."""
    first = ahead[0]
    principal = sum(i.principal_minor for i in ahead)
    fees = sum(i.fees_minor for i in ahead)
    count = len(ahead) + months
    first_period = terms.first_period_days if first.seq == 1 else DAYS_IN_MONTH
    again = replace(terms, principal_minor=principal, term=count, origination_fee_minor=fees,
                    first_period_days=first_period)  # fmt: skip
    whole = build_schedule(again, first.due_date, anchor)
    if principal_paid_minor > whole[0].principal_minor:
        rest = replace(again, principal_minor=principal - principal_paid_minor, term=count - 1,
                       origination_fee_minor=fees - first.fees_minor,
                       first_period_days=DAYS_IN_MONTH)  # fmt: skip
        after = due_dates(first.due_date, 2, anchor)[1]
        kept = replace(first, seq=1, principal_minor=principal_paid_minor)
        whole = [kept, *(replace(i, seq=i.seq + 1) for i in build_schedule(rest, after, anchor))]
    return [replace(i, seq=first.seq + i.seq - 1) for i in whole]


def default_first_due_date(disbursed_on: date) -> date:
    return disbursed_on + relativedelta(months=1)


def first_period_days(disbursed_on: date, first_due_date: date) -> int:
    """The first period in 30/360 days: 30 for each whole month stepped from the disbursement
    by the schedule's own month arithmetic (its day of month kept, clamped at month end) without
    passing the first due date, and the days left over. The default first due date, a month
    after the disbursement, is exactly 30."""
    months = 0
    while disbursed_on + relativedelta(months=months + 1) <= first_due_date:
        months += 1
    stepped = disbursed_on + relativedelta(months=months)
    return DAYS_IN_MONTH * months + (first_due_date - stepped).days


def monthly_rate(annual_rate: Decimal) -> Decimal:
    return annual_rate / 12


def annuity_payment(principal_minor: int, annual_rate: Decimal, term: int) -> Decimal:
    """The exact level payment P*r / (1 - (1 + r)^-n), in minor units, unrounded."""
    rate = monthly_rate(annual_rate)
    if rate == 0:
        return Decimal(principal_minor) / term
    return principal_minor * rate / (1 - (1 + rate) ** -term)


class InstallmentsDoNotFit(ValueError):
    """No installments in whole multiples fit the loan: with each at least one multiple and
    none larger than the one before, every run repays it before its last installment or leaves
    the last larger than the one before. The multiple is too large for the loan."""


def build_schedule(
    terms: ScheduleTerms, first_due_date: date, anchor_day: int | None = None
) -> list[ScheduledInstallment]:
    """The loan's installments; InstallmentsDoNotFit when its installment multiple is too
    large for it."""
    dates = due_dates(first_due_date, terms.term, anchor_day)
    # An interest-free loan's installments are level either way; rounding them to a
    # multiple is the level payment's rule.
    level = terms.amortization is Amortization.EQUAL_INSTALLMENT or (
        terms.amortization is Amortization.INTEREST_FREE
        and bool(terms.installment_multiple_of_minor)
    )
    step = terms.installment_multiple_of_minor or 1
    fees = _fee_parts(terms)
    if level and step > 1:
        parts = _multiple_parts(terms, step)
    elif (
        terms.amortization is Amortization.INTEREST_FREE
        and terms.fee_collection is FeeCollection.SPREAD
    ):
        parts = _interest_free_parts(terms, fees) or _equal_principal_parts(terms)
    elif level:
        parts = _equal_installment_parts(terms)
    else:
        parts = _equal_principal_parts(terms)
    return [
        ScheduledInstallment(seq, due, principal, interest, fee)
        for seq, (due, (principal, interest), fee) in enumerate(
            zip(dates, parts, fees, strict=True), start=1
        )
    ]


def _equal_installment_parts(terms: ScheduleTerms) -> list[tuple[int, int]]:
    # Level over the first period's own length: a long first period's extra interest is
    # spread over every installment rather than left to the last (a payment shock), and a
    # short one's saving likewise.
    exact = _level_payment(terms)
    payment = round_minor(exact, terms.rounding)
    # Rounding up can pay a tiny loan off before its last period: then round the level payment
    # down, so the last installment absorbs the shortfall instead.
    floored = floor_minor(exact)
    if floored <= _interest(terms.principal_minor, terms):
        # Rounded down, the payment would not even cover the interest: an interest-only loan with
        # the whole principal due last. Keep the nearest payment and let the loan finish early.
        floored = payment
    for level in (payment, floored):
        parts = _level_payment_parts(terms, level, strict=True)
        if parts is not None:
            return parts
    # Loans whose principal part is under one minor unit a period: keep every part >= 0.
    parts = _level_payment_parts(terms, floored, strict=False)
    assert parts is not None
    return parts


def _multiple_parts(terms: ScheduleTerms, step: int) -> list[tuple[int, int]]:
    """Installments in whole multiples of ``step`` (a product's installment_multiple_of), the
    last one the residual: see _installments_in_multiples."""
    fees = _fees_in_multiples(terms)
    installments = _installments_in_multiples(terms, step, fees)
    if installments is None:
        raise InstallmentsDoNotFit()
    outstanding = terms.principal_minor
    parts = []
    for seq, installment in enumerate(installments, start=1):
        interest = _period_interest(outstanding, terms, seq)
        principal = _principal_part(installment - fees[seq - 1], interest, seq)
        assert 0 <= principal < outstanding
        parts.append((principal, interest))
        outstanding -= principal
    parts.append((outstanding, _period_interest(outstanding, terms, terms.term)))
    return parts


# How many partial runs of installments _installments_in_multiples tries before it gives up:
# over 40,000 random loans (terms 3-60, multiples 0.05-100.00) it tried at most about 200 at
# rates up to 36 %, 802 near 90 %; the bound keeps a crafted loan from holding origination.
_MOST_RUNS_TRIED = 2_000


def _fees_in_multiples(terms: ScheduleTerms) -> list[int]:
    """Each installment's share of a spread origination fee, which its multiple includes: the
    borrower pays a round sum each month. An upfront fee is due on top of the first."""
    if terms.fee_collection is FeeCollection.SPREAD:
        return _fee_parts(terms)
    return [0] * terms.term


def _installments_in_multiples(
    terms: ScheduleTerms, step: int, fees: Sequence[int]
) -> list[int] | None:
    """Installments 1 to the last but one in whole multiples of ``step``, or None if none fit.
    An installment here is what the borrower pays: its principal, interest and share of a
    spread fee (``fees``, by seq).
    They fit when each is at least one multiple and none larger than the one before, no
    installment is left with nothing to pay and the last, the residual, is no larger than the
    one before it: no payment shock at the end, and no empty promise to pay.

    Each is the smallest multiple with which the ones after it can still fit. That is nearly
    always the level payment of what is left, rounded up to the multiple: paying at least that
    keeps it from rising, so the next one is the same or a multiple less. Only a multiple that
    is a large part of the installment needs more: where stepping down a multiple one
    installment later repays the loan early and one earlier leaves the last too large, earlier
    installments take a multiple more.
    """
    runs_tried = itertools.count()

    def rest_from(seq: int, outstanding: int, ceiling: int | None) -> list[int] | None:
        if seq == terms.term:
            return []
        if next(runs_tried) >= _MOST_RUNS_TRIED:
            return None
        # One multiple on each installment left repays at most that many multiples.
        few_left = outstanding <= (terms.term - seq) * step
        if few_left and _last_installment(terms, fees, seq, outstanding, step) <= 0:
            return None  # one multiple on each installment left repays the loan early
        # The one before (the ceiling) was chosen so that paying it on each installment left
        # leaves the last no larger: the search below starts there, one step from its end.
        guess = ceiling or max(step, ceil_to_multiple(_level_payment(terms) + fees[0], step))
        installment = _smallest_installment(terms, fees, step, seq, outstanding, guess)
        interest, fee = _period_interest(outstanding, terms, seq), fees[seq - 1]
        if seq == 1:
            # A first period so long its interest is more than the level installment: the
            # first pays that interest, rounded up to the multiple (the rest to principal).
            installment = max(installment, ceil_to_multiple(Decimal(interest + fee), step))
        while (ceiling is None or installment <= ceiling) and (
            installment - fee - interest < outstanding
        ):
            repaid = _principal_part(installment - fee, interest, seq)
            rest = rest_from(seq + 1, outstanding - repaid, installment)
            if rest is not None:
                return [installment, *rest]
            installment += step
        return None

    return rest_from(1, terms.principal_minor, None)


def _level_payment(terms: ScheduleTerms) -> Decimal:
    """The exact level payment that repays the loan, its first period's length included: over
    a first period of f months it solves P (1 + r f) - X = X a(n - 1) (a: the annuity factor),
    so X is the usual level payment times (1 + r f) / (1 + r); unless the first period's
    interest alone is more than that, when the first installment is the interest and the rest
    repay P over n - 1."""
    level = annuity_payment(terms.principal_minor, terms.annual_rate, terms.term)
    if terms.first_period_days == DAYS_IN_MONTH:
        return level
    rate = monthly_rate(terms.annual_rate)
    first_months = Decimal(terms.first_period_days) / DAYS_IN_MONTH
    level = level * (1 + rate * first_months) / (1 + rate)
    if terms.term > 1 and terms.principal_minor * rate * first_months > level:
        return annuity_payment(terms.principal_minor, terms.annual_rate, terms.term - 1)
    return level


def _smallest_installment(
    terms: ScheduleTerms, fees: Sequence[int], step: int, seq: int, outstanding: int, guess: int
) -> int:
    """The smallest multiple of ``step``, at least one, that paid on installments ``seq`` to
    the last but one leaves the last no larger than itself; any smaller one leaves the last
    larger than every installment that could come before it. Paying more leaves the last no
    larger (each period's outstanding principal, and so its interest, only falls), so the
    multiples that fit are all those from the smallest on: it is bracketed from ``guess`` by
    doubling steps, then bisected. A walk of one step at a time took minutes where the guess
    is far off: after a first installment of the first period's interest alone, twice the
    level, 0.05 at a time down to the level (a tester's loan held the server 63 s)."""

    def fits(multiples: int) -> bool:
        installment = multiples * step
        return _last_installment(terms, fees, seq, outstanding, installment) <= installment

    known = max(guess // step, 1)
    span = 1
    if fits(known):
        # Downwards: `fitting` fits; `lower` does not, or is 0 (no installment is below one).
        fitting, lower = known, known - span
        while lower >= 1 and fits(lower):
            fitting, span = lower, span * 2
            lower = fitting - span
        lower = max(lower, 0)
    else:
        lower, fitting = known, known + span
        while not fits(fitting):
            lower, span = fitting, span * 2
            fitting = lower + span
    while fitting - lower > 1:
        middle = (lower + fitting) // 2
        if fits(middle):
            fitting = middle
        else:
            lower = middle
    return fitting * step


def _last_installment(
    terms: ScheduleTerms, fees: Sequence[int], seq: int, outstanding: int, installment: int
) -> int:
    """The last installment, its fee share included, when ``installment`` is paid on
    installments ``seq`` to the last but one of a loan with ``outstanding`` principal before
    ``seq``; at most 0 if that repays the principal before the last."""
    for paying in range(seq, terms.term):
        interest = _period_interest(outstanding, terms, paying)
        outstanding -= _principal_part(installment - fees[paying - 1], interest, paying)
        if outstanding <= 0:
            return outstanding
    return outstanding + _period_interest(outstanding, terms, terms.term) + fees[-1]


def _level_payment_parts(
    terms: ScheduleTerms, payment: int, *, strict: bool
) -> list[tuple[int, int]] | None:
    outstanding = terms.principal_minor
    parts = []
    for seq in range(1, terms.term + 1):
        interest = _period_interest(outstanding, terms, seq)
        principal = outstanding if seq == terms.term else _principal_part(payment, interest, seq)
        if seq < terms.term and not 0 <= principal < outstanding:
            if strict:
                return None
            principal = min(max(principal, 0), outstanding)
        parts.append((principal, interest))
        outstanding -= principal
    return parts


def _equal_principal_parts(terms: ScheduleTerms) -> list[tuple[int, int]]:
    share = _even_share(terms.principal_minor, terms.term, terms.rounding)
    outstanding = terms.principal_minor
    parts = []
    for seq in range(1, terms.term + 1):
        principal = outstanding if seq == terms.term else share
        parts.append((principal, _period_interest(outstanding, terms, seq)))
        outstanding -= principal
    return parts


def _interest_free_parts(terms: ScheduleTerms, fees: Sequence[int]) -> list[tuple[int, int]] | None:
    """An interest-free loan whose origination fee is spread: what the borrower pays each
    month is level, the fee's share inside it, the last the residual. Rounded apart, the
    principal's and the fee's shares could each gain half a minor unit: 3,333.33 with 116.67
    spread over 6 months was 575.01 five times and 574.95, not 575.00 six times (a tester's).
    None where the level sum leaves a principal part negative (a fee far larger than the
    principal): then the principal is shared evenly, as without a fee."""
    level = _even_share(terms.principal_minor + sum(fees), terms.term, terms.rounding)
    principals = [level - fee for fee in fees[:-1]]
    last = terms.principal_minor - sum(principals)
    if min(principals, default=0) < 0 or last < 0:
        return None
    return [(principal, 0) for principal in [*principals, last]]


def _period_interest(outstanding_minor: int, terms: ScheduleTerms, seq: int) -> int:
    """Installment ``seq``'s interest: a month's, or the first period's for the first."""
    days = terms.first_period_days if seq == 1 else DAYS_IN_MONTH
    return _interest(outstanding_minor, terms, days)


def _principal_part(installment: int, interest: int, seq: int) -> int:
    """What an installment repays of the principal. A first period longer than a month can owe
    more interest than the level installment: then the first installment is that interest and
    repays nothing, rather than adding the rest to the principal."""
    principal = installment - interest
    return max(principal, 0) if seq == 1 else principal


def _interest(outstanding_minor: int, terms: ScheduleTerms, days: int = DAYS_IN_MONTH) -> int:
    """``days`` (30/360) of interest on the outstanding principal: a month's by default.
    Multiplied before dividing, so an exact tie (0.30 at 20 % is 0.5 minor units a month) rounds
    by the product's mode, not by where the 28 digits of 0.20 / 12 happened to stop; a month is
    * 30 / 360, the same quotient as / 12."""
    return round_minor(outstanding_minor * terms.annual_rate * days / 360, terms.rounding)


def _fee_parts(terms: ScheduleTerms) -> list[int]:
    fee = terms.origination_fee_minor
    if terms.fee_collection is FeeCollection.UPFRONT or terms.term == 1:
        return [fee] + [0] * (terms.term - 1)
    share = _even_share(fee, terms.term, terms.rounding)
    return [share] * (terms.term - 1) + [fee - share * (terms.term - 1)]


def _even_share(total: int, count: int, rounding: Rounding) -> int:
    """total / count rounded, but never so high that the last share would go negative."""
    share = round_minor(Decimal(total) / count, rounding)
    if share * (count - 1) > total:
        share = total // count
    return share
