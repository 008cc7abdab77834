"""Borrower grades from their loans' grades, and the credit limit that follows them."""

from collections.abc import Iterable, Sequence
from datetime import date
from functools import lru_cache
from typing import Any, Protocol, cast

from sqlalchemy import Date, Table, and_, bindparam, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.borrowers.models import Borrower
from app.db import is_postgres, update_rows
from app.delinquency import service as delinquency
from app.events import service as events
from app.loans.models import OPEN_STATUSES, Loan
from app.money import format_minor
from app.risk.limits import LENDS_NOTHING, next_limit
from app.risk.models import FlagStatus, RiskFlag
from app.risk.rules import RiskRules
from app.risk.score import FADE_DAYS, FlagFact, grade_for, score_value
from app.risk.versions import current_rules


class ScoredLoan(Protocol):
    id: str
    days_past_due: int
    risk_score: int
    risk_grade: str


async def score_loans(
    session: AsyncSession,
    as_of: date,
    loans: Sequence[ScoredLoan],
    open_flags: Iterable[tuple[str, str, str, date]],
    flags_of: Any,
) -> None:
    """Store each loan's score and grade from its days past due and its flags.

    ``loans`` carry the stored score and grade (the features query read them), so only the
    changed ones are written. ``open_flags`` (loan id, code, severity, raised on) are these
    loans' open flags, as the caller just left them; the flags cleared recently enough to
    still weigh are read, ``flags_of`` narrowing them to these loans' (a loan-id range or one
    id, cheaper than a list of tens of thousands of ids)."""
    if not loans:
        return
    fading = date.fromordinal(as_of.toordinal() - FADE_DAYS)
    facts: dict[str, list[FlagFact]] = {loan.id: [] for loan in loans}
    for loan_id, code, severity, raised_on in open_flags:
        facts[loan_id].append(FlagFact(code, severity, None, raised_on))
    flag = cast(Table, RiskFlag.__table__)
    for loan_id, code, severity, cleared_on, raised_on in await session.execute(
        select(
            flag.c.loan_id, flag.c.code, flag.c.severity, flag.c.cleared_on, flag.c.raised_on
        ).where(flags_of, flag.c.status == FlagStatus.CLEARED.value, flag.c.cleared_on > fading)
    ):
        if loan_id in facts:
            facts[loan_id].append(FlagFact(code, severity, cleared_on, raised_on))
    changed = []
    for loan in loans:
        score = score_value(loan.days_past_due, facts[loan.id], as_of)
        grade = grade_for(score)
        if (score, grade) != (loan.risk_score, loan.risk_grade):
            changed.append({"id": loan.id, "risk_score": score, "risk_grade": grade})
    await update_rows(session, cast(Table, Loan.__table__), "id", changed)


async def grade_borrowers(
    session: AsyncSession,
    as_of: date,
    low: str | None = None,
    high: str | None = None,
    *,
    borrower_id: str | None = None,
    rules: RiskRules | None = None,
    because_of: str | None = None,
    move_limits: bool = True,
) -> dict[str, int]:
    """Re-grade the borrowers of the loans in the range (or one borrower): their grade is their
    worst open loan's, its reasons their open flags' codes; a change of grade is an event and
    may move the credit limit, a change of reasons alone is written without one (the flags'
    own events announced it). ``rules``: the thresholds in force, when the caller has read
    them already. ``because_of``: the loan whose change (a payment, a reversal) graded the
    borrower: the events go in that loan's lane, to each endpoint after the loan's own events
    that led to them (they raced them, and a subscriber saw a grade fall before the reversal
    behind it: a tester's). ``move_limits``: False grades without moving a limit or ending an
    admin's override (a close's rerun: ``close.service.grade_borrowers``).

    In bulk: a first close over a large book re-grades hundreds of thousands of borrowers."""
    if rules is None:
        _, rules = await current_rules(session)
    bounds = {"borrower_id": borrower_id, "low": low, "high": high}
    params = {name: value for name, value in bounds.items() if value is not None}
    statement = _grading_statement(borrower_id is not None, low is not None, high is not None)
    postgres = is_postgres(session)
    if borrower_id is not None and postgres:
        # Held before the borrower's loans are read: two payments paying off two of one
        # borrower's loans at once each read the other loan still open, in a snapshot taken
        # before the other committed, and the borrower stayed at D or E with nothing owed
        # (a tester's). SQLite's write lock already holds each transaction alone.
        await session.execute(_LOCK_BORROWER, {"borrower_id": borrower_id})
    rows = (await session.execute(statement, {**params, "as_of": as_of})).all()
    if rows and borrower_id is None and postgres:
        # Read again now that the borrowers are locked: a borrower whose lock the statement
        # waited for (a payment grading it) was rechecked by PostgreSQL with the loans read
        # before the wait, and graded on them.
        rows = (await session.execute(statement, {**params, "as_of": as_of})).all()
    reasons = await _open_flag_codes(session, [row.id for row in rows])
    updates: dict[str, dict[str, Any]] = {}
    grade_events: list[dict[str, Any]] = []
    limit_events: list[dict[str, Any]] = []
    for row in rows:
        update_row = {"id": row.id, "risk_grade": row.risk_grade,
                      "risk_reasons": row.risk_reasons,
                      "credit_limit_minor": row.credit_limit_minor,
                      "limit_before_cut_minor": row.limit_before_cut_minor,
                      "limit_changed_on": row.limit_changed_on,
                      "limit_overridden": row.limit_overridden}  # fmt: skip
        codes = reasons.get(row.id, [])
        if codes != list(row.risk_reasons or []):
            update_row.update(risk_reasons=codes)
            updates[row.id] = update_row
        if row.new_grade != row.risk_grade:
            update_row.update(risk_grade=row.new_grade)
            updates[row.id] = update_row
            # A fall to D or E ends an admin's override, as it cuts the limit.
            if move_limits and row.new_grade in LENDS_NOTHING and row.new_grade > row.risk_grade:
                update_row.update(limit_overridden=False)
            grade_events.append(_event("risk.grade_changed", because_of, {
                "borrower_id": row.id, "merchant_id": row.merchant_id,
                "previous_grade": row.risk_grade, "grade": row.new_grade, "reasons": codes,
                "as_of": as_of.isoformat()}))  # fmt: skip
        if not move_limits:
            continue
        change = next_limit(
            previous_grade=row.risk_grade, grade=row.new_grade,
            credit_limit_minor=row.credit_limit_minor, exposure_minor=row.exposure,
            limit_before_cut_minor=row.limit_before_cut_minor,
            limit_changed_on=row.limit_changed_on, clean_since=_clean_since(row),
            clean_days_required=rules.limit_recovery_clean_days, as_of=as_of,
        )  # fmt: skip
        if change is None or change.credit_limit_minor == row.credit_limit_minor:
            continue
        update_row.update(
            credit_limit_minor=change.credit_limit_minor,
            limit_before_cut_minor=change.limit_before_cut_minor,
            limit_changed_on=as_of,
        )
        updates[row.id] = update_row
        limit_events.append(_event("borrower.credit_limit_changed", because_of, {
            "borrower_id": row.id, "merchant_id": row.merchant_id,
            "previous_credit_limit": format_minor(row.credit_limit_minor, row.currency),
            "credit_limit": format_minor(change.credit_limit_minor, row.currency),
            "reason": change.reason, "grade": row.new_grade,
            "as_of": as_of.isoformat()}))  # fmt: skip
    await _write(session, list(updates.values()))
    # A borrower's grade change before its limit's (emit_many keeps each borrower's order): a
    # limit moves because of the grade it follows.
    await events.emit_many(session, [*grade_events, *limit_events])
    return {"grades_changed": len(grade_events), "limits_changed": len(limit_events)}


_borrower = cast(Table, Borrower.__table__)
# NO KEY UPDATE, as every borrower lock (app/borrowers/service.py).
_LOCK_BORROWER = (
    select(_borrower.c.id)
    .where(_borrower.c.id == bindparam("borrower_id"))
    .with_for_update(key_share=True)
)


@lru_cache(maxsize=8)
def _grading_statement(one_borrower: bool, has_low: bool, has_high: bool) -> Any:
    """The borrowers in scope that may change, with their loans' worst grade, exposure and
    history, locked: built once per scope shape (building it was an eighth of a payment's CPU),
    the borrower id or the loan-id bounds, and the date graded, bound at execution.

    May change: the grade moves, a cut limit may recover, or a flag was raised or cleared on
    the date graded (the reasons may move; every evaluation dates its flags with the date the
    grading that follows it is for)."""
    borrower, loan = cast(Table, Borrower.__table__), cast(Table, Loan.__table__)
    flag = cast(Table, RiskFlag.__table__)
    scope: Any
    flags_in_scope: Any
    if one_borrower:
        scope = [bindparam("borrower_id")]
        flags_in_scope = flag.c.borrower_id == bindparam("borrower_id")
    else:
        low: Any = bindparam("low") if has_low else None
        high: Any = bindparam("high") if has_high else None
        scope = select(loan.c.borrower_id).where(delinquency.in_range(loan.c.id, low, high))
        # Each flag is its loan's chunk's to find, its borrower being in that chunk's scope.
        flags_in_scope = delinquency.in_range(flag.c.loan_id, low, high)
    as_of = bindparam("as_of", type_=Date)
    flags_moved = select(flag.c.borrower_id).where(
        flags_in_scope, or_(flag.c.raised_on == as_of, flag.c.cleared_on == as_of)
    )
    is_open = loan.c.status.in_(OPEN_STATUSES)
    # Over all the borrower's loans: the grade and exposure of the open ones, and the history
    # (first disbursement, last cure) that says how long they have been without arrears.
    worst = (
        select(
            loan.c.borrower_id,
            func.max(case((is_open, loan.c.risk_grade))).label("grade"),
            func.max(case((and_(is_open, loan.c.days_past_due > 0), 1), else_=0)).label("past_due"),
            func.sum(case((is_open, loan.c.principal_outstanding_minor), else_=0)).label(
                "exposure"
            ),
            func.min(loan.c.disbursed_on).label("first_disbursed_on"),
            func.max(loan.c.cured_on).label("last_cured_on"),
        )
        .where(loan.c.borrower_id.in_(scope))
        .group_by(loan.c.borrower_id)
        .subquery()
    )
    new_grade = func.coalesce(worst.c.grade, "A")
    return (
        select(
            borrower,
            new_grade.label("new_grade"),
            func.coalesce(worst.c.past_due, 0).label("past_due"),
            func.coalesce(worst.c.exposure, 0).label("exposure"),
            worst.c.first_disbursed_on,
            worst.c.last_cured_on,
        )
        .select_from(borrower.outerjoin(worst, worst.c.borrower_id == borrower.c.id))
        .where(
            borrower.c.id.in_(scope),
            (new_grade != borrower.c.risk_grade)
            | borrower.c.limit_before_cut_minor.is_not(None)
            | borrower.c.id.in_(flags_moved),
        )
        # Only the borrowers that may change are locked, in id order: chunks sharing one
        # wait for each other (no deadlock), and the second re-reads the first's grade
        # (PostgreSQL rechecks a locked row's condition) and does not repeat its events.
        # Locking every borrower of a chunk cost a tuple write each, 1M per close. NO KEY
        # UPDATE, as every borrower lock (app/borrowers/service.py).
        .order_by(borrower.c.id)
        .with_for_update(of=borrower, key_share=True)
    )


def _clean_since(row: Any) -> date | None:
    """Since when the borrower has had nothing past due: None while something is."""
    if row.past_due or row.first_disbursed_on is None:
        return None
    first: date = row.first_disbursed_on
    return max(first, row.last_cured_on or first)


def _event(type_: str, loan_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "loan_id": loan_id, "data": data}


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
    await update_rows(session, table, "id", updates)
    # A borrower loaded in this session (the real-time path) must not keep stale values.
    for row in updates:
        cached = session.identity_map.get(session.identity_key(Borrower, row["id"]))
        if cached is not None:
            await session.refresh(cached)
