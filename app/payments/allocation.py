"""The allocation waterfall and the replay of a loan's payments: pure functions, no I/O.

A payment received on day D pays, installment by installment, oldest due first: fees, then
interest, then principal. If what is left covers the payoff, the interest of periods after
the current one is forgiven and the loan is paid off; anything beyond that is a credit
balance. Otherwise it pays the current period's installment the same way, then the scheduled
fee and principal of later ones, in order: their interest is not owed yet (a payoff would
forgive it), so paying ahead lowers the payoff by exactly what was paid.

A scheduled fee (the origination fee, spread over the installments) is the price of the loan,
not of time: a payoff owes what is left of it on every installment, where the interest of
later periods is forgiven.

A late fee counts from the night the close charged it: a payment dated earlier does not pay
it. The close charges an installment that owed more than the arrears tolerance after the
payments received by its last day of grace. When those payments, some reported after the
close, leave it owing no more than that, the close would not have charged the fee had it known
them, and the replay withdraws it as never charged: a back-dated payment that paid in time. So
does a payoff dated by the fee's night (the close charges no paid-off loan), so a replayed
loan is never paid off owing a late fee. A fee that is a percent of the unpaid part is
lowered, the same way, to what the close would have charged on what they left unpaid (never
raised above what it charged); a fee waiver already granted on it is taken off the lowered
fee, down to nothing.

Balances are never patched in place: they are the result of replaying every applied payment in
order of receipt, so a reversal (or a back-dated payment) re-allocates everything after it.
A late fee is never re-dated: a replay only withdraws it (or part of it) or, when the payment
that showed it too soon is gone, owes it again; the ledger records either change.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta


@dataclass(frozen=True)
class LateFee:
    assessed_on: date
    amount_minor: int
    # What a fee waiver forgave of the fee as the close charged it (not in ``amount_minor``).
    waived_minor: int = 0


@dataclass(frozen=True)
class InstallmentTerms:
    seq: int
    due_date: date
    principal_minor: int
    interest_minor: int
    fees_minor: int = 0
    late_fees: tuple[LateFee, ...] = ()

    def fees_charged_by(self, day: date) -> int:
        if not self.late_fees:  # nearly always, and every loan read asks it of each installment
            return self.fees_minor
        return self.fees_minor + sum(f.amount_minor for f in self.late_fees if f.assessed_on <= day)

    def without_fees(self, waived_minor: int) -> "InstallmentTerms":
        """These terms with ``waived_minor`` of their fees forgiven, as if never charged: late
        fees first, oldest first, then the scheduled fee."""
        if not waived_minor:  # nearly always: every loan read builds each installment's terms
            return self
        late_fees = []
        for fee in self.late_fees:
            forgiven = min(waived_minor, fee.amount_minor)
            waived_minor -= forgiven
            if fee.amount_minor > forgiven:
                late_fees.append(LateFee(fee.assessed_on, fee.amount_minor - forgiven, forgiven))
        fees = self.fees_minor - min(waived_minor, self.fees_minor)
        return replace(self, fees_minor=fees, late_fees=tuple(late_fees))


@dataclass(frozen=True)
class PaymentIn:
    id: str
    amount_minor: int
    received_on: date


@dataclass(frozen=True)
class Allocation:
    payment_id: str
    installment_seq: int
    fees_minor: int
    interest_minor: int
    principal_minor: int

    @property
    def total_minor(self) -> int:
        return self.fees_minor + self.interest_minor + self.principal_minor


@dataclass
class InstallmentPosition:
    terms: InstallmentTerms
    paid_fees_minor: int = 0
    paid_interest_minor: int = 0
    paid_principal_minor: int = 0
    interest_waived_minor: int = 0
    paid_on: date | None = None
    # The day a payment first left no more than the arrears tolerance unpaid (a replay's; not
    # stored): from then the close counted it as not missed, though paid_on came later.
    within_tolerance_on: date | None = None
    # What the replay withdrew of the late fees charged too soon (the installment was settled
    # by their night) or charged on more than was unpaid (a percent fee): not in ``terms``.
    late_fees_withdrawn: tuple[LateFee, ...] = ()

    @property
    def seq(self) -> int:
        return self.terms.seq

    @property
    def paid_minor(self) -> int:
        return self.paid_fees_minor + self.paid_interest_minor + self.paid_principal_minor

    @property
    def late_fees_withdrawn_minor(self) -> int:
        return sum(f.amount_minor for f in self.late_fees_withdrawn)

    def fees_left(self, day: date) -> int:
        # None as of a day before a late fee paid since was charged.
        return max(self.terms.fees_charged_by(day) - self.paid_fees_minor, 0)

    def interest_left(self) -> int:
        return self.terms.interest_minor - self.paid_interest_minor - self.interest_waived_minor

    def principal_left(self) -> int:
        return self.terms.principal_minor - self.paid_principal_minor

    def left(self, day: date) -> int:
        return self.fees_left(day) + self.interest_left() + self.principal_left()

    def settled_by(self, day: date) -> bool:
        return self.left(day) == 0

    @property
    def missed_until(self) -> date | None:
        """The day the close stopped counting it missed: within the tolerance, or settled."""
        return min(
            (d for d in (self.within_tolerance_on, self.paid_on) if d is not None), default=None
        )


@dataclass
class LoanPosition:
    installments: list[InstallmentPosition]
    allocations: list[Allocation] = field(default_factory=list)
    credit_balance_minor: int = 0
    paid_off_on: date | None = None
    # What an installment may still owe and not be late (the replay's): dates within_tolerance_on.
    arrears_tolerance_minor: int = 0

    @property
    def principal_outstanding_minor(self) -> int:
        return sum(i.principal_left() for i in self.installments)

    @property
    def repaid_minor(self) -> int:
        return sum(i.paid_minor for i in self.installments)

    def overdue_minor(self, as_of: date) -> int:
        """Unpaid amounts of installments whose due date has passed."""
        return sum(i.left(as_of) for i in self.installments if i.terms.due_date < as_of)

    def payoff_minor(self, as_of: date) -> int:
        """What settles the loan on ``as_of``: everything due, the current period in full, and
        the principal and scheduled fees of later periods (their interest is not owed on early
        payoff)."""
        if self.paid_off_on is not None:
            return 0
        total = 0
        current_seen = False
        for inst in self.installments:
            # Of a period not begun, its principal and scheduled fee, not its interest.
            total += inst.fees_left(as_of) + inst.principal_left()
            due_date = inst.terms.due_date
            if due_date <= as_of or not current_seen:
                total += inst.interest_left()
                current_seen = current_seen or due_date > as_of
        return total

    def allocations_of(self, payment_id: str) -> list[Allocation]:
        return [a for a in self.allocations if a.payment_id == payment_id]


def fees_to_waive(position: LoanPosition, day: date, cap_minor: int | None) -> dict[int, int]:
    """What a fee waiver on ``day`` forgives on each installment: the fees left on those due by
    then, oldest first, up to ``cap_minor`` (all of them when None)."""
    waived: dict[int, int] = {}
    left = cap_minor
    for inst in position.installments:
        if inst.terms.due_date > day or left == 0:
            continue
        amount = inst.fees_left(day) if left is None else min(left, inst.fees_left(day))
        if amount > 0:
            waived[inst.seq] = amount
            left = None if left is None else left - amount
    return waived


def late_fees_forgiven(position: LoanPosition) -> dict[int, int]:
    """The late fees the replay withdrew as charged too soon, by installment."""
    return {i.seq: i.late_fees_withdrawn_minor for i in position.installments
            if i.late_fees_withdrawn_minor}  # fmt: skip


def late_fee_changes(position: LoanPosition, recorded: dict[int, int]) -> dict[int, int]:
    """What the ledger must add, by installment, to agree with the replayed ``position`` when it
    has ``recorded`` so much forgiven: more forgiven (> 0) or owed again (< 0)."""
    forgiven = late_fees_forgiven(position)
    changes = {
        seq: forgiven.get(seq, 0) - recorded.get(seq, 0)
        for seq in sorted(forgiven.keys() | recorded.keys())
    }
    return {seq: change for seq, change in changes.items() if change}


def forgiven_on(position: LoanPosition, seq: int) -> date:
    """The date the late fee the replay withdraws on installment ``seq`` is taken back: the
    night it was charged, as if never charged (the last one's, should it have more)."""
    withdrawn = next(i for i in position.installments if i.seq == seq).late_fees_withdrawn
    return withdrawn[-1].assessed_on


def replay(
    installments: Sequence[InstallmentTerms],
    payments: Iterable[PaymentIn],
    *,
    arrears_tolerance_minor: int = 0,
    late_fee_for: Callable[[int], int] | None = None,
    grace_days: int = 0,
) -> LoanPosition:
    """The loan's position after applying ``payments`` (in the given order) to a fresh schedule,
    without the late fees charged on an installment settled by its last day of grace
    (``grace_days`` after its due date; ``arrears_tolerance_minor``: what an installment may
    still owe and not be late, as the close reckons it) and with a percent fee no more than the
    product charges on what that day left unpaid (``late_fee_for``: that fee, given the unpaid
    amount; None for a fixed fee, which does not depend on it)."""
    payments = list(payments)
    withdrawn = _late_fees_withdrawn(
        installments, payments, arrears_tolerance_minor, late_fee_for, grace_days
    )
    position = LoanPosition(
        [
            InstallmentPosition(_less(t, withdrawn[t.seq]), late_fees_withdrawn=withdrawn[t.seq])
            for t in installments
        ],
        arrears_tolerance_minor=arrears_tolerance_minor,
    )
    for payment in payments:
        apply_payment(position, payment)
    return position


def _late_fees_withdrawn(
    installments: Sequence[InstallmentTerms],
    payments: list[PaymentIn],
    tolerance_minor: int,
    late_fee_for: Callable[[int], int] | None,
    grace_days: int,
) -> dict[int, tuple[LateFee, ...]]:
    """What of each late fee a close would not have charged had it known every payment received
    by its installment's last day of grace: each replayed as that night saw it, the fees of
    earlier nights as they stand and the payments received by that day, in the order the nights
    ran. The whole fee when the installment then owed no more than the tolerance, or the
    payments fell no more short of the installments due by then, late fees aside; of a percent
    fee, what it charged beyond the fee on the lesser of the two, what a waiver forgave of it
    already counting against that fee. Fees of one night (a close that charged several at
    once) are judged in the order their graces ended."""
    withdrawn: dict[int, tuple[LateFee, ...]] = {t.seq: () for t in installments}
    grace = timedelta(days=grace_days)
    # Never after its night: should relief have moved the installment's due date since, the
    # fee is judged as that night saw it.
    charged = sorted(
        [
            (fee.assessed_on, min(t.due_date + grace, fee.assessed_on), t.seq, fee)
            for t in installments
            for fee in t.late_fees
        ],
        key=lambda charge: charge[:3],
    )
    judged_ons = {(seq, fee.assessed_on): judged_on for _, judged_on, seq, fee in charged}
    for night, judged_on, seq, fee in charged:
        standing = [_less(t, withdrawn[t.seq]) for t in installments]
        # The fees of earlier nights, and those of this night on older graces: a close that
        # charges several at once (a back-dated book's first) charges what closes run each
        # night would have charged by then, so a payment of the night pays them first.
        seen = LoanPosition([InstallmentPosition(_fees_by(t, night, judged_on, judged_ons))
                             for t in standing])  # fmt: skip
        by_then = [p for p in payments if p.received_on <= judged_on]
        for payment in by_then:
            apply_payment(seen, payment)
        judged = next(i for i in seen.installments if i.seq == seq)
        # Late is only what the payments fell short of the installments due by then, late fees
        # aside: no fee for an installment the older fees alone left owing (no pyramiding).
        due_through = sum(t.principal_minor + t.interest_minor + t.fees_minor for t in standing
                          if t.due_date <= judged.terms.due_date)  # fmt: skip
        unpaid = min(judged.left(night), due_through - sum(p.amount_minor for p in by_then))
        late = [p for p in payments if judged_on < p.received_on <= night]
        if unpaid > tolerance_minor and late:
            for payment in late:
                apply_payment(seen, payment)
        if unpaid <= tolerance_minor or seen.paid_off_on is not None:
            # Settled in its grace; or paid off by the night, when the close charges nothing.
            due = 0
        elif late_fee_for is not None:
            # A waiver is a concession on the fee owed: lowered, the fee still takes it off.
            as_charged = fee.amount_minor + fee.waived_minor
            due = max(0, min(as_charged, late_fee_for(unpaid)) - fee.waived_minor)
        else:
            due = fee.amount_minor
        if due < fee.amount_minor:
            withdrawn[seq] = (*withdrawn[seq], LateFee(night, fee.amount_minor - due))
    return withdrawn


def _fees_by(
    terms: InstallmentTerms,
    night: date,
    judged_on: date,
    judged_ons: dict[tuple[int, date], date],
) -> InstallmentTerms:
    """The terms with the late fees a close of ``night`` judging a grace that ended on
    ``judged_on`` had charged: those of earlier nights, and of that night on older graces."""
    if not terms.late_fees:  # most installments: the replay judges each fee of the loan
        return terms
    late_fees = tuple(
        f for f in terms.late_fees if f.assessed_on < night or (
            f.assessed_on == night and judged_ons[(terms.seq, night)] < judged_on
        )
    )  # fmt: skip
    return terms if len(late_fees) == len(terms.late_fees) else replace(terms, late_fees=late_fees)


def _less(terms: InstallmentTerms, withdrawn: tuple[LateFee, ...]) -> InstallmentTerms:
    """The terms with what was withdrawn of each late fee (by its night) taken off it."""
    if not withdrawn:
        return terms
    late_fees = []
    for fee in terms.late_fees:
        taken = sum(w.amount_minor for w in withdrawn if w.assessed_on == fee.assessed_on)
        if fee.amount_minor > taken:
            late_fees.append(replace(fee, amount_minor=fee.amount_minor - taken))
    return replace(terms, late_fees=tuple(late_fees))


def apply_payment(position: LoanPosition, payment: PaymentIn) -> None:
    day = payment.received_on
    if position.paid_off_on is not None:
        position.credit_balance_minor += payment.amount_minor
        return
    remaining = payment.amount_minor
    if remaining >= position.payoff_minor(day):
        remaining = _pay_off(position, payment, remaining)
    else:
        remaining = _pay_ahead(position, payment, remaining)
    position.credit_balance_minor += remaining


def _pay_off(position: LoanPosition, payment: PaymentIn, remaining: int) -> int:
    day = payment.received_on
    current_paid = False
    for inst in position.installments:
        if inst.terms.due_date > day and current_paid:
            inst.interest_waived_minor += inst.interest_left()
        remaining = _pay_installment(position, inst, payment, remaining)
        current_paid = current_paid or inst.terms.due_date > day
    position.paid_off_on = day
    return remaining


def _pay_ahead(position: LoanPosition, payment: PaymentIn, remaining: int) -> int:
    """Less than the payoff: everything due, oldest first; then the current period's
    installment in full order; then the fee and principal of the periods not yet begun (the
    payoff owes those, so paying ahead lowers it by exactly what was paid)."""
    # Each installment stops where the money does: one it does not reach keeps no paid_on.
    day = payment.received_on
    current_seen = False
    for inst in position.installments:
        if not remaining:
            break
        not_begun = inst.terms.due_date > day and current_seen
        remaining = _pay_installment(position, inst, payment, remaining, not_begun=not_begun)
        current_seen = current_seen or inst.terms.due_date > day
    return remaining


def _pay_installment(
    position: LoanPosition,
    inst: InstallmentPosition,
    payment: PaymentIn,
    remaining: int,
    *,
    not_begun: bool = False,
) -> int:
    day = payment.received_on
    # Each part's balance read once: the replay pays each installment for each payment.
    fees_left = inst.fees_left(day)
    interest_left = inst.interest_left()
    principal_left = inst.principal_left()
    fees = min(remaining, fees_left)
    # A period not begun owes no interest: a payoff would forgive it.
    interest = 0 if not_begun else min(remaining - fees, interest_left)
    principal = min(remaining - fees - interest, principal_left)
    if fees or interest or principal:
        inst.paid_fees_minor += fees
        inst.paid_interest_minor += interest
        inst.paid_principal_minor += principal
        position.allocations.append(Allocation(payment.id, inst.seq, fees, interest, principal))
    left = fees_left + interest_left + principal_left - fees - interest - principal
    if inst.paid_on is None and left == 0:
        inst.paid_on = day
    if inst.within_tolerance_on is None and (fees or interest or principal):
        if left <= position.arrears_tolerance_minor:
            inst.within_tolerance_on = day
    return remaining - fees - interest - principal
