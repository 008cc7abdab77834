"""A repayment plan's installments, from its requested terms and from the promises that carry
it once approved: pure functions, no I/O."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from itertools import accumulate
from typing import Any

from app.promises.models import PromiseStatus


class PlanStatus(StrEnum):
    PROPOSED = "proposed"  # requested, not decided
    REJECTED = "rejected"
    ACTIVE = "active"  # approved; an installment is still open
    COMPLETED = "completed"  # every installment kept
    BROKEN = "broken"  # an installment missed: the plan ends there
    CANCELLED = "cancelled"  # the loan closed, or a newer plan replaced it


@dataclass(frozen=True)
class PlanInstallment:
    due_on: date
    amount_minor: int


def terms_of(installments: Iterable[PlanInstallment]) -> dict[str, Any]:
    """What a restructure stores for a plan (JSON)."""
    return {
        "installments": [
            {"due_on": i.due_on.isoformat(), "amount_minor": i.amount_minor} for i in installments
        ]
    }


def installments_of(terms: dict[str, Any]) -> list[PlanInstallment]:
    return [
        PlanInstallment(date.fromisoformat(i["due_on"]), int(i["amount_minor"]))
        for i in terms["installments"]
    ]


def cumulative(installments: Sequence[PlanInstallment]) -> list[int]:
    """What the plan asks in total by each installment's date: the amount of its promise."""
    return list(accumulate(i.amount_minor for i in installments))


@dataclass(frozen=True)
class PromiseState:
    """The parts of a plan installment's promise its view needs."""

    status: str
    paid_minor: int
    kept_on: date | None
    broken_on: date | None


@dataclass(frozen=True)
class InstallmentProgress:
    seq: int
    due_on: date
    amount_minor: int
    paid_minor: int  # its share of what the plan received by its due date, paid in order
    status: str  # proposed, or the promise's: open, kept, broken, cancelled
    kept_on: date | None = None
    broken_on: date | None = None


def progress(
    installments: Sequence[PlanInstallment], promises: Sequence[PromiseState] | None
) -> tuple[PlanStatus | None, list[InstallmentProgress]]:
    """Each installment's share of the payments and state; the plan's status once approved
    (``promises`` in ``plan_seq`` order), None before."""
    if promises is None:
        return None, [
            InstallmentProgress(n, i.due_on, i.amount_minor, 0, PlanStatus.PROPOSED.value)
            for n, i in enumerate(installments, start=1)
        ]
    # Each installment's promise counts the plan's money received by its due date: what of
    # that the installments before it did not take is its share. Money received after an
    # installment's date is no part of it (a payment after a missed date shows on the next
    # installment, not as paid on the one its promise.broken said was short).
    rows, taken = [], 0
    for n, (i, p) in enumerate(zip(installments, promises, strict=True), start=1):
        share = min(i.amount_minor, max(0, p.paid_minor - taken))
        taken += share
        rows.append(
            InstallmentProgress(
                seq=n, due_on=i.due_on, amount_minor=i.amount_minor, paid_minor=share,
                status=p.status, kept_on=p.kept_on, broken_on=p.broken_on,
            )
        )  # fmt: skip
    statuses = {p.status for p in promises}
    if PromiseStatus.BROKEN in statuses:
        return PlanStatus.BROKEN, rows
    if PromiseStatus.OPEN in statuses:
        return PlanStatus.ACTIVE, rows
    if statuses == {PromiseStatus.KEPT.value}:
        return PlanStatus.COMPLETED, rows
    return PlanStatus.CANCELLED, rows
