"""Borrower grades from their loans' grades, and the credit limit that follows them."""

from datetime import date
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.borrowers import service as borrowers_service
from app.borrowers.models import Borrower
from app.delinquency import service as delinquency
from app.events import service as events
from app.loans.models import OPEN_STATUSES, Loan
from app.money import format_minor
from app.risk.limits import next_limit
from app.risk.models import FlagStatus, RiskFlag
from app.risk.score import FlagFact, score_loan


async def score_loans(session: AsyncSession, as_of: date, loan_ids: list[str]) -> None:
    """Store each loan's score and grade from its days past due and its flags."""
    if not loan_ids:
        return
    fading = as_of.toordinal() - 182
    facts: dict[str, list[FlagFact]] = {loan_id: [] for loan_id in loan_ids}
    for flag in await session.scalars(
        select(RiskFlag).where(
            RiskFlag.loan_id.in_(loan_ids),
            (RiskFlag.status == FlagStatus.OPEN)
            | (RiskFlag.cleared_on >= date.fromordinal(fading)),
        )
    ):
        facts[flag.loan_id].append(FlagFact(flag.code, flag.severity, flag.cleared_on))
    rows = await session.execute(
        select(Loan.id, Loan.days_past_due, Loan.risk_score, Loan.risk_grade).where(
            Loan.id.in_(loan_ids)
        )
    )
    changed = []
    for loan_id, dpd, old_score, old_grade in rows:
        score = score_loan(dpd, facts[loan_id], as_of)
        if (score.score, score.grade) != (old_score, old_grade):
            changed.append({"l_id": loan_id, "score": score.score, "grade": score.grade})
    if changed:
        table = cast(Table, Loan.__table__)
        await session.execute(
            update(table)
            .where(table.c.id == bindparam("l_id"))
            .values(risk_score=bindparam("score"), risk_grade=bindparam("grade")),
            changed,
        )


async def grade_borrowers(
    session: AsyncSession,
    as_of: date,
    low: str | None = None,
    high: str | None = None,
    *,
    borrower_id: str | None = None,
) -> dict[str, int]:
    """Re-grade the borrowers of the loans in the range (or one borrower): their grade is their
    worst open loan's; a change is an event and may move the credit limit."""
    if borrower_id is not None:
        scope = [borrower_id]
    else:
        scope = list(
            await session.scalars(
                select(Loan.borrower_id).where(delinquency.in_range(Loan.id, low, high)).distinct()
            )
        )
    if not scope:
        return {"grades_changed": 0, "limits_changed": 0}
    worst = (
        select(
            Loan.borrower_id,
            func.max(Loan.risk_grade).label("grade"),
            func.max(case((Loan.days_past_due > 0, 1), else_=0)).label("past_due"),
        )
        .where(Loan.borrower_id.in_(scope), Loan.status.in_(OPEN_STATUSES))
        .group_by(Loan.borrower_id)
        .subquery()
    )
    new_grade = func.coalesce(worst.c.grade, "A")
    rows = (
        await session.execute(
            select(
                Borrower.id,
                new_grade.label("grade"),
                func.coalesce(worst.c.past_due, 0).label("past_due"),
            )
            .outerjoin(worst, worst.c.borrower_id == Borrower.id)
            .where(
                Borrower.id.in_(scope),
                (new_grade != Borrower.risk_grade)
                | Borrower.limit_before_cut_minor.is_not(None)
                | new_grade.in_(("D", "E")),
            )
        )
    ).all()
    grades = limits = 0
    for row in rows:
        borrower = await session.get(Borrower, row.id, with_for_update=True)
        assert borrower is not None
        if row.grade != borrower.risk_grade:
            grades += 1
            await _change_grade(session, borrower, row.grade, as_of)
        if await _apply_limit_policy(session, borrower, bool(row.past_due), as_of):
            limits += 1
    return {"grades_changed": grades, "limits_changed": limits}


async def _change_grade(session: AsyncSession, borrower: Borrower, grade: str, as_of: date) -> None:
    reasons = sorted(
        set(
            await session.scalars(
                select(RiskFlag.code).where(
                    RiskFlag.borrower_id == borrower.id, RiskFlag.status == FlagStatus.OPEN
                )
            )
        )
    )
    previous = borrower.risk_grade
    borrower.risk_grade, borrower.risk_reasons = grade, reasons
    await events.emit(
        session,
        "risk.grade_changed",
        {"borrower_id": borrower.id, "merchant_id": borrower.merchant_id,
         "previous_grade": previous, "grade": grade, "reasons": reasons,
         "as_of": as_of.isoformat()},
    )  # fmt: skip


async def _apply_limit_policy(
    session: AsyncSession, borrower: Borrower, past_due: bool, as_of: date
) -> bool:
    exposure = await borrowers_service.exposure_minor(session, borrower.id)
    change = next_limit(
        grade=borrower.risk_grade, credit_limit_minor=borrower.credit_limit_minor,
        exposure_minor=exposure, limit_before_cut_minor=borrower.limit_before_cut_minor,
        limit_changed_on=borrower.limit_changed_on, any_past_due=past_due, as_of=as_of,
    )  # fmt: skip
    if change is None or change.credit_limit_minor == borrower.credit_limit_minor:
        return False
    previous = borrower.credit_limit_minor
    borrower.credit_limit_minor = change.credit_limit_minor
    borrower.limit_before_cut_minor = change.limit_before_cut_minor
    borrower.limit_changed_on = as_of
    data: dict[str, Any] = {
        "borrower_id": borrower.id,
        "merchant_id": borrower.merchant_id,
        "previous_credit_limit": format_minor(previous, borrower.currency),
        "credit_limit": format_minor(change.credit_limit_minor, borrower.currency),
        "reason": change.reason,
        "grade": borrower.risk_grade,
        "as_of": as_of.isoformat(),
    }
    await events.emit(session, "borrower.credit_limit_changed", data)
    return True
