"""Delinquency rules for one loan: pure functions, no I/O. The nightly close applies the same
rules in SQL over millions of loans; tests hold the two to agreement.

An installment is *missed* when its due date has passed and its unpaid part exceeds the arrears
tolerance. Days past due count from the due date of the oldest missed installment.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum


class Bucket(StrEnum):
    CURRENT = "current"
    DPD_1_30 = "1-30"
    DPD_31_60 = "31-60"
    DPD_61_90 = "61-90"
    DPD_90_PLUS = "90+"

    @property
    def label(self) -> str:
        """The M0-M3+ label collections teams use beside the day ranges."""
        return BUCKET_LABELS[self]

    @property
    def rank(self) -> int:
        """Worse buckets rank higher (the risk step compares two per evaluated loan)."""
        return BUCKET_RANKS[self]


BUCKET_RANKS = {bucket: rank for rank, bucket in enumerate(Bucket)}
BUCKET_LABELS = {
    Bucket.CURRENT: "M0",
    Bucket.DPD_1_30: "M1",
    Bucket.DPD_31_60: "M2",
    Bucket.DPD_61_90: "M3",
    Bucket.DPD_90_PLUS: "M3+",
}


@dataclass(frozen=True)
class DueInstallment:
    seq: int
    due_date: date
    unpaid_minor: int


def days_past_due(as_of: date, installments: Iterable[DueInstallment], tolerance_minor: int) -> int:
    missed = [
        i.due_date for i in installments if i.due_date < as_of and i.unpaid_minor > tolerance_minor
    ]
    return (as_of - min(missed)).days if missed else 0


def first_past_30(
    as_of: date, installments: Iterable[tuple[DueInstallment, date | None]], tolerance_minor: int
) -> date | None:
    """The first day the loan was more than 30 days past due, from each installment's due
    date and the day it was settled (None: not yet); None if it never was by ``as_of``."""
    days: list[date] = []
    for installment, settled_on in installments:
        past_30 = installment.due_date + timedelta(days=31)
        if past_30 > as_of:
            continue
        if settled_on is None and installment.unpaid_minor > tolerance_minor:
            days.append(past_30)
        elif settled_on is not None and settled_on > past_30:
            days.append(past_30)
    return min(days, default=None)


def cure_date(as_of: date, installments: Iterable[tuple[DueInstallment, date | None]]) -> date:
    """The day a loan found current as of ``as_of`` left its arrears: ``as_of``, or the later
    day on which a payment received after it (today's, counted while yesterday is the
    business date) settled the last installment that was past due, as tonight's close and
    a catch-up date it."""
    return max(
        (
            settled_on
            for installment, settled_on in installments
            if settled_on is not None and installment.due_date < as_of < settled_on
        ),
        default=as_of,
    )


def spell_past_due(
    as_of: date, installments: Iterable[tuple[DueInstallment, date | None]], tolerance_minor: int
) -> tuple[date | None, date | None]:
    """From each installment's due date and the day it was settled (None: not yet), the first
    day of the loan's spell past due on ``as_of`` and the cure before it (the first day after
    the spell before; None if there was none): the history a payment or reversal rewrites.
    An installment still unpaid by no more than the tolerance counts as never missed (when it
    came within it is not kept)."""
    merged = _spells(as_of, installments, tolerance_minor)
    if not merged or merged[-1][1] < as_of:
        return None, None
    cured_on = merged[-2][1] + timedelta(days=1) if len(merged) > 1 else None
    return merged[-1][0], cured_on


def last_cure(
    as_of: date, installments: Iterable[tuple[DueInstallment, date | None]], tolerance_minor: int
) -> date | None:
    """The day the loan last left a spell past due that ended before ``as_of`` (as
    ``spell_past_due`` reads the history); None if none did."""
    ended = [last for _, last in _spells(as_of, installments, tolerance_minor) if last < as_of]
    return ended[-1] + timedelta(days=1) if ended else None


def past_due_since(
    day: date,
    as_of: date,
    installments: Iterable[tuple[DueInstallment, date | None]],
    tolerance_minor: int,
) -> bool:
    """Whether the history (as ``spell_past_due`` reads it) has the loan past due on a day
    from ``day`` to ``as_of``."""
    return any(last >= day for _, last in _spells(as_of, installments, tolerance_minor))


def _spells(
    as_of: date, installments: Iterable[tuple[DueInstallment, date | None]], tolerance_minor: int
) -> list[tuple[date, date]]:
    """The loan's spells past due up to ``as_of`` (first and last day each), in order."""
    spells: list[tuple[date, date]] = []
    for installment, settled_on in installments:
        if installment.due_date >= as_of:
            continue
        first = installment.due_date + timedelta(days=1)
        if settled_on is not None:
            last = min(settled_on - timedelta(days=1), as_of)
        elif installment.unpaid_minor > tolerance_minor:
            last = as_of
        else:
            continue
        if first <= last:
            spells.append((first, last))
    merged: list[tuple[date, date]] = []
    for first, last in sorted(spells):
        if merged and first <= merged[-1][1] + timedelta(days=1):
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def bucket_for(dpd: int) -> Bucket:
    if dpd <= 0:
        return Bucket.CURRENT
    if dpd <= 30:
        return Bucket.DPD_1_30
    if dpd <= 60:
        return Bucket.DPD_31_60
    if dpd <= 90:
        return Bucket.DPD_61_90
    return Bucket.DPD_90_PLUS


def status_for(dpd: int, charge_off_after_days: int, restructured: bool = False) -> str:
    """active (current; restructured when current after a term extension), delinquent (1-90),
    defaulted (91 and more), charged_off (beyond the charge-off threshold); a cured loan is
    active (or restructured) again."""
    if dpd <= 0:
        return "restructured" if restructured else "active"
    if dpd <= 90:
        return "delinquent"
    if dpd <= charge_off_after_days:
        return "defaulted"
    return "charged_off"


@dataclass(frozen=True)
class LateFeePolicy:
    grace_days: int
    kind: str  # "fixed" or "percent"
    amount_minor: int = 0
    percent_ppm: int = 0  # parts per million: 50000 = 5 %
    cap_minor: int | None = None


def late_fee_due(as_of: date, due_date: date, grace_days: int) -> bool:
    """The close of ``as_of`` may charge the installment's late fee: its grace ends that day
    (the close of the last day of grace charges it, so the next morning's quotes include it)
    or has ended."""
    return as_of >= late_fee_judged_on(due_date, grace_days)


def late_fee_judged_on(due_date: date, grace_days: int) -> date:
    """The last day of grace: an installment owing more than the arrears tolerance after the
    payments received by then is late, and owes the fee (one paid the day after is late)."""
    return due_date + timedelta(days=grace_days)


def late_fee_minor(policy: LateFeePolicy, unpaid_minor: int) -> int:
    """The fee for one overdue installment: fixed, or a percent of its unpaid part rounded
    half up, capped per installment."""
    if policy.kind == "fixed":
        fee = policy.amount_minor
    else:
        fee = int(
            (Decimal(unpaid_minor) * policy.percent_ppm / 1_000_000).quantize(
                Decimal(1), rounding=ROUND_HALF_UP
            )
        )
    if policy.cap_minor is not None:
        fee = min(fee, policy.cap_minor)
    return fee
