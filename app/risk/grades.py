"""Borrower grades from their loans' grades, and the credit limit that follows them."""

from datetime import date
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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
    worst open loan's; a change is an event and may move the credit limit.

    In bulk: a first close over a large book re-grades hundreds of thousands of borrowers."""
    borrower, loan = cast(Table, Borrower.__table__), cast(Table, Loan.__table__)
    if borrower_id is not None:
        scope: Any = [borrower_id]
    else:
        scope = select(loan.c.borrower_id).where(delinquency.in_range(loan.c.id, low, high))
    # Locked in id order: chunks sharing a borrower wait for each other (no deadlock), and
    # the second then reads the first's grade and does not repeat its events.
    await session.execute(
        select(borrower.c.id)
        .where(borrower.c.id.in_(scope))
        .order_by(borrower.c.id)
        .with_for_update()
    )
    worst = (
        select(
            loan.c.borrower_id,
            func.max(loan.c.risk_grade).label("grade"),
            func.max(case((loan.c.days_past_due > 0, 1), else_=0)).label("past_due"),
            func.sum(loan.c.principal_outstanding_minor).label("exposure"),
        )
        .where(loan.c.borrower_id.in_(scope), loan.c.status.in_(OPEN_STATUSES))
        .group_by(loan.c.borrower_id)
        .subquery()
    )
    new_grade = func.coalesce(worst.c.grade, "A")
    rows = (
        await session.execute(
            select(
                borrower,
                new_grade.label("new_grade"),
                func.coalesce(worst.c.past_due, 0).label("past_due"),
                func.coalesce(worst.c.exposure, 0).label("exposure"),
            )
            .select_from(borrower.outerjoin(worst, worst.c.borrower_id == borrower.c.id))
            .where(
                borrower.c.id.in_(scope),
                (new_grade != borrower.c.risk_grade)
                | borrower.c.limit_before_cut_minor.is_not(None)
                | new_grade.in_(("D", "E")),
            )
        )
    ).all()
    regraded = [row for row in rows if row.new_grade != row.risk_grade]
    reasons = await _open_flag_codes(session, [row.id for row in regraded])
    updates: dict[str, dict[str, Any]] = {}
    grade_events: list[dict[str, Any]] = []
    limit_events: list[dict[str, Any]] = []
    for row in rows:
        update_row = {"b_id": row.id, "b_grade": row.risk_grade, "b_reasons": row.risk_reasons,
                      "b_limit": row.credit_limit_minor,
                      "b_before_cut": row.limit_before_cut_minor,
                      "b_changed_on": row.limit_changed_on}  # fmt: skip
        if row.new_grade != row.risk_grade:
            codes = reasons.get(row.id, [])
            update_row.update(b_grade=row.new_grade, b_reasons=codes)
            updates[row.id] = update_row
            grade_events.append(_event("risk.grade_changed", {
                "borrower_id": row.id, "merchant_id": row.merchant_id,
                "previous_grade": row.risk_grade, "grade": row.new_grade, "reasons": codes,
                "as_of": as_of.isoformat()}))  # fmt: skip
        change = next_limit(
            grade=row.new_grade, credit_limit_minor=row.credit_limit_minor,
            exposure_minor=row.exposure, limit_before_cut_minor=row.limit_before_cut_minor,
            limit_changed_on=row.limit_changed_on, any_past_due=bool(row.past_due), as_of=as_of,
        )  # fmt: skip
        if change is None or change.credit_limit_minor == row.credit_limit_minor:
            continue
        update_row.update(
            b_limit=change.credit_limit_minor,
            b_before_cut=change.limit_before_cut_minor,
            b_changed_on=as_of,
        )
        updates[row.id] = update_row
        limit_events.append(_event("borrower.credit_limit_changed", {
            "borrower_id": row.id, "merchant_id": row.merchant_id,
            "previous_credit_limit": format_minor(row.credit_limit_minor, row.currency),
            "credit_limit": format_minor(change.credit_limit_minor, row.currency),
            "reason": change.reason, "grade": row.new_grade,
            "as_of": as_of.isoformat()}))  # fmt: skip
    await _write(session, list(updates.values()))
    # Grade changes first: a limit moves because of the grade it follows.
    await events.emit_many(session, [*grade_events, *limit_events])
    return {"grades_changed": len(grade_events), "limits_changed": len(limit_events)}


def _event(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "loan_id": None, "data": data}


async def _open_flag_codes(session: AsyncSession, borrower_ids: list[str]) -> dict[str, list[str]]:
    codes: dict[str, set[str]] = {}
    for start in range(0, len(borrower_ids), 5000):
        rows = await session.execute(
            select(RiskFlag.borrower_id, RiskFlag.code).where(
                RiskFlag.borrower_id.in_(borrower_ids[start : start + 5000]),
                RiskFlag.status == FlagStatus.OPEN,
            )
        )
        for borrower_id, code in rows:
            codes.setdefault(borrower_id, set()).add(code)
    return {borrower_id: sorted(found) for borrower_id, found in codes.items()}


async def _write(session: AsyncSession, updates: list[dict[str, Any]]) -> None:
    if not updates:
        return
    table = cast(Table, Borrower.__table__)
    await session.execute(
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(
            risk_grade=bindparam("b_grade"),
            risk_reasons=bindparam("b_reasons"),
            credit_limit_minor=bindparam("b_limit"),
            limit_before_cut_minor=bindparam("b_before_cut"),
            limit_changed_on=bindparam("b_changed_on"),
        ),
        updates,
    )
    # A borrower loaded in this session (the real-time path) must not keep stale values.
    for row in updates:
        cached = session.identity_map.get(session.identity_key(Borrower, row["b_id"]))
        if cached is not None:
            await session.refresh(cached)
