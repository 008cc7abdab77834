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


def relapse(
    first_day_past_due: date,
    cured_on: date | None,
    relapsed_on: date | None,
    relapse_cured_on: date | None,
) -> tuple[date | None, date | None]:
    """A current loan going past due from ``first_day_past_due``: its spell's first day and
    the cure before it (``relapsed_on``, ``relapse_cured_on``). Past due from before its last
    cure (a reversal took back the payment that cured it), the spell that cure ended goes on,
    and so do its dates."""
    if cured_on is not None and first_day_past_due <= cured_on:
        return relapsed_on, relapse_cured_on
    return first_day_past_due, cured_on


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
