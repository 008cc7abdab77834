"""The early-warning engine: per-loan features in SQL, the rules of ``rules.py`` over them,
and flags raised once per episode and cleared when the condition ends — each an event.

The nightly close runs it over loan-id chunks after delinquency; a payment, reversal or failed
debit runs the very same code for its one loan, in its own transaction.
"""

from collections import ChainMap
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal
from typing import cast as typing_cast

from sqlalchemy import (
    Date,
    DateTime,
    Integer,
    String,
    Table,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    or_,
    select,
    text,
    true,
    union,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.close.models import CloseRun, CloseStatus
from app.config import get_settings
from app.db import (
    add_days,
    days_between,
    insert_rows,
    is_postgres,
    update_rows,
    utc_now,
)
from app.delinquency import service as delinquency
from app.errors import Conflict, InvalidRequest, NotFound
from app.events import service as events
from app.gateways.models import FailedDebit
from app.ids import new_ids
from app.loans.models import OPEN_STATUSES, Loan, LoanInstallment
from app.payments.models import Payment, PaymentStatus, ReversalReason
from app.portfolio import positions as portfolio
from app.products.models import Product
from app.promises.models import Promise, PromiseStatus
from app.risk import grades
from app.risk.models import FlagStatus, RiskFlag, RiskRulesVersion, RiskRun
from app.risk.rules import (
    STORED,
    BrokenPromise,
    FlagCode,
    LoanFeatures,
    RiskRules,
    Severity,
    evaluate,
)
from app.risk.score import FADE_DAYS, FlagFact, Score, score_loan
from app.risk.versions import current_rules
from app.webhooks import service as webhooks


class RiskFlagNotFound(NotFound):
    code = "risk_flag_not_found"


class RiskFlagAlreadyAcknowledged(Conflict):
    code = "risk_flag_already_acknowledged"


class RulesVersionConflict(Conflict):
    code = "rules_version_conflict"


async def get_rules(session: AsyncSession, principal: Principal) -> tuple[int, RiskRules]:
    principal.require(Role.DASHBOARD)
    return await current_rules(session)


async def put_rules(
    session: AsyncSession, principal: Principal, *, rules: RiskRules, made_from: int | None = None
) -> tuple[int, RiskRules]:
    """A new version, unless the rules are those in force; it applies from the next evaluation
    (run, payment or close).

    ``made_from``, when given, is the version the caller read and changed: if another change
    came since, storing this one would silently undo it."""
    principal.require(Role.ADMIN)
    version, in_force = await current_rules(session)
    if made_from is not None and made_from > version:
        raise InvalidRequest.field(
            "version", f"there is no version {made_from}: the current version is {version}"
        )
    if made_from is not None and made_from != version:
        raise RulesVersionConflict(
            f"the rules were changed since version {made_from}; the current version is "
            f"{version}: read them again and apply the change to those"
        )
    if rules == in_force:
        # No change, no version: a PUT sent twice made two, and each had the next close
        # evaluate every open loan again (a tester's).
        return version, in_force
    session.add(
        RiskRulesVersion(
            version=version + 1, rules=rules.model_dump(mode="json"), created_at=utc_now(),
            created_by=principal.api_key_id,
        )
    )  # fmt: skip
    await session.flush()
    return version + 1, rules


def _features_params(
    as_of: date, rules: RiskRules, low: str | None, high: str | None, loan_id: str | None
) -> dict[str, Any]:
    """The values ``_features_query`` binds: the dates its windows start from, and its scope."""
    return {
        "as_of": as_of,
        "reversals_after": as_of - timedelta(days=rules.payment_reversal_days),
        "debits_after": as_of - timedelta(days=rules.failed_debits_days),
        "broken_after": as_of - timedelta(days=rules.broken_promise_days),
        "fading_after": as_of - timedelta(days=FADE_DAYS),
        "partial_ratio_ppm": int(rules.partial_payment_ratio * 1_000_000),
        "low": low,
        "high": high,
        "loan_id": loan_id,
    }


# How a features query picks its loans: one loan (the real-time path), a loan-id range (a
# chunk), the ids listed by ``_may_change_overnight`` for a chunk (PostgreSQL), or that
# selection as a subquery of the statement (SQLite).
Scope = Literal["loan", "range", "listed", "changed"]


def _whole(total: Any) -> Any:
    """A sum of counts as an integer (PostgreSQL sums bigints into numerics), 0 for none."""
    return cast(func.coalesce(total, 0), Integer)


def _scope(scope_kind: Scope, has_low: bool, has_high: bool) -> Callable[[Any], Any]:
    """The condition on a loan-id column that keeps the loans in scope."""
    if scope_kind == "loan":
        return lambda column: column == bindparam("loan_id")
    if scope_kind == "listed":
        ids = bindparam("loan_ids", type_=postgresql.ARRAY(String))
        return lambda column: column == any_(ids)
    low: Any = bindparam("low") if has_low else None
    high: Any = bindparam("high") if has_high else None
    return lambda column: delinquency.in_range(column, low, high)


@lru_cache(maxsize=8)
def _changed_loans_query(has_low: bool, has_high: bool) -> Any:
    return _may_change_overnight(_scope("range", has_low, has_high))


@lru_cache(maxsize=8)
def _candidates_query(has_low: bool, has_high: bool) -> Any:
    return _may_be_flagged(_scope("range", has_low, has_high))


def _flagged_loans(scope: Callable[[Any], Any]) -> Any:
    """The loans in scope with a flag open, or one cleared recently enough to weigh in their
    score. Uncorrelated, so PostgreSQL hashes it once rather than probing it per row."""
    rf = RiskFlag.__table__.c
    return select(rf.loan_id).where(
        scope(rf.loan_id),
        or_(rf.status == FlagStatus.OPEN.value,
            rf.cleared_on > bindparam("fading_after", type_=Date)),
    )  # fmt: skip


def _may_change_overnight(scope: Callable[[Any], Any]) -> Any:
    """The open loans whose flags or score may change between yesterday's close and today's
    with no payment, reversal or failed debit between (those re-evaluate their loan at once):
    a loan past due (days past due, cure relapse, rolls, the borrower's other late loans,
    broken promises all need arrears), one with a flag open or fading or a score below
    perfect (flags clear, windows run out, cleared flags fade), one whose installment ended
    its grace today (the last periods partial_payments looks at move on), one whose debit
    failed or payment was reversed today (counted from today), one whose promise or repayment
    plan broke today, one with a payment received today (it counts from its date, whenever
    it was recorded) and one booked past due since (its flags deferred).
    Every other loan's features are yesterday's, and so are its flags
    (tests/close/test_overnight.py).
    """
    loan, product = Loan.__table__.c, Product.__table__.c
    i, fd, p = LoanInstallment.__table__.c, FailedDebit.__table__.c, Payment.__table__.c
    as_of = bindparam("as_of", type_=Date)
    perfect = score_loan(0, [], date.min)
    # Due the day before today's grace ended, for any product's grace: a few loans too many
    # when products differ in grace costs nothing, one too few would miss a flag.
    grace_ended_today = select(i.loan_id).where(
        scope(i.loan_id), i.due_date.in_(select(add_days(as_of, -1 - product.grace_days)))
    )
    # A debit that failed today was evaluated as of yesterday, when it did not count yet.
    debit_failed_today = select(fd.loan_id).where(scope(fd.loan_id), fd.attempted_on == as_of)
    # So was a payment reversed as of today (dated after the business date it was made on).
    reversed_today = select(p.loan_id).where(scope(p.loan_id), p.reversed_on == as_of)
    # A promise the close broke today: broken_promise, and partial_payments once its plan ends.
    pr = Promise.__table__.c
    promise_broken_today = select(pr.loan_id).where(scope(pr.loan_id), pr.broken_on == as_of)
    # A payment received today was recorded before, maybe days before in a catch-up, but counts
    # only from today (what it settled, how late).
    p = Payment.__table__.c
    paid_today = select(p.loan_id).where(
        scope(p.loan_id), p.received_on == as_of, p.status == PaymentStatus.APPLIED.value
    )
    return select(loan.id).where(
        scope(loan.id),
        loan.status.in_(OPEN_STATUSES),
        or_(
            loan.flags_deferred,  # booked past due: not evaluated yet, whatever it is now
            loan.days_past_due > 0,
            loan.risk_score != perfect.score,
            loan.risk_grade != perfect.grade,
            loan.id.in_(_flagged_loans(scope)),
            loan.id.in_(grace_ended_today),
            loan.id.in_(debit_failed_today),
            loan.id.in_(reversed_today),
            loan.id.in_(promise_broken_today),
            loan.id.in_(paid_today),
        ),
    )


def _counted_reversal(p: Any, as_of: Any) -> Any:
    """A reversal payment_reversal counts on ``as_of``: NSF or chargeback, within the window
    (``reversals_after``), and not dated after the date evaluated: one dated after the business
    date counts from the close of its own date (``_may_change_overnight``), not before it
    happened."""
    return and_(
        p.status == PaymentStatus.REVERSED.value,
        p.reversal_reason.in_((ReversalReason.NSF.value, ReversalReason.CHARGEBACK.value)),
        p.reversed_on > bindparam("reversals_after", type_=Date),
        p.reversed_on <= as_of,
    )


def _counted_failed_debit(fd: Any, as_of: Any) -> Any:
    """A failed debit failed_debits counts on ``as_of``: within the window (``debits_after``)
    and, like a reversal, not dated after the date evaluated."""
    return and_(fd.attempted_on > bindparam("debits_after", type_=Date), fd.attempted_on <= as_of)


def _may_be_flagged(scope: Callable[[Any], Any]) -> Any:
    """The open loans in scope some rule could flag or whose score could move, from facts an
    index or a plain scan finds, without the features query's windows: a superset of the
    loans that query keeps (its last filter). What a first close, or a close under new rules,
    evaluates: in a large book most loans are paid on time, and sorting their installments
    was most of that close's risk step.
    """
    loan, i, p = Loan.__table__.c, LoanInstallment.__table__.c, Payment.__table__.c
    fd, pr = FailedDebit.__table__.c, Promise.__table__.c
    as_of = bindparam("as_of", type_=Date)
    perfect = score_loan(0, [], date.min)
    reversed_lately = select(p.loan_id).where(scope(p.loan_id), _counted_reversal(p, as_of))
    failed_lately = select(fd.loan_id).where(scope(fd.loan_id), _counted_failed_debit(fd, as_of))
    broken_lately = select(pr.loan_id).where(
        scope(pr.loan_id),
        pr.status == PromiseStatus.BROKEN.value,
        pr.broken_on > bindparam("broken_after", type_=Date),
        pr.broken_on <= as_of,
    )
    # One pass over the chunk's installments. Missed installments (first payment default,
    # early payment default, consecutive misses) have more than the tolerance unpaid after
    # their due date, so more than nothing; late settlement is what late_drift and the newest
    # settled installment's lateness need. partial_payments: a period paid in part but under
    # the ratio of its installment holds only payments under that ratio, so under the ratio
    # of the loan's largest installment.
    missed_or_paid_late = or_(
        and_(i.due_date < as_of, delinquency.unpaid_sql(as_of) > 0), i.settled_on > i.due_date
    )
    installments = (
        select(
            i.loan_id,
            func.max(case((missed_or_paid_late, 1), else_=0)).label("behind"),
            func.max(i.principal_minor + i.interest_minor + i.fees_minor).label("largest_due"),
        )
        .where(scope(i.loan_id))
        .group_by(i.loan_id)
        .subquery()
    )
    smallest = (
        select(p.loan_id, func.min(p.amount_minor).label("paid"))
        .where(scope(p.loan_id), p.status == PaymentStatus.APPLIED.value)
        .group_by(p.loan_id)
        .subquery()
    )
    behind_or_paid_in_part = (
        select(installments.c.loan_id)
        .outerjoin(smallest, smallest.c.loan_id == installments.c.loan_id)
        .where(
            or_(
                installments.c.behind == 1,
                smallest.c.paid * 1_000_000
                < installments.c.largest_due * bindparam("partial_ratio_ppm", type_=Integer),
            )
        )
    )
    behind_or_scored = select(loan.id).where(
        scope(loan.id),
        or_(
            loan.days_past_due > 0,
            loan.risk_score != perfect.score,
            loan.risk_grade != perfect.grade,
        ),
    )
    # One union of cheap scans, each run once: as ORed subqueries PostgreSQL probed some of
    # them per loan, and listing took longer than the features it saved.
    candidates = union(
        behind_or_scored, _flagged_loans(scope), behind_or_paid_in_part, reversed_lately,
        failed_lately, broken_lately,
    ).subquery()  # fmt: skip
    # Not a loan disbursed after the date, which the features query leaves out anyway: a
    # catch-up of a book brought in back-dated listed every later loan for each early date,
    # and their features took minutes a date on PostgreSQL (a tester's: 21,000 listed, 47 due).
    return (
        select(loan.id)
        .join(candidates, candidates.c.id == loan.id)
        .where(scope(loan.id), loan.status.in_(OPEN_STATUSES), loan.disbursed_on <= as_of)
    )


@lru_cache(maxsize=64)
def _features_query(
    rules_json: str,
    tolerance_setting: Decimal,
    scope_kind: Scope,
    has_low: bool,
    has_high: bool,
    every_payment: bool = False,
) -> Any:
    """The features of the open loans in scope as of a date: built once per rules version and
    scope shape, the dates, bounds and ids bound at execution (``_features_params``). Building
    it is most of a payment's CPU otherwise. ``every_payment``: payments received after the
    date count too (the real-time path, as delinquency's)."""
    rules = RiskRules.model_validate_json(rules_json, context=STORED)
    i, loan, product = LoanInstallment.__table__.c, Loan.__table__.c, Product.__table__.c
    as_of_sql = bindparam("as_of", type_=Date)
    tolerance = delinquency.tolerance_sql(tolerance_setting)
    # A close settles as of the date evaluated: a payment received after it (a catch-up, or
    # today's when yesterday is closed) has not settled anything yet. Counting every payment,
    # arrears paid today are no longer unpaid (the flags they raised clear), but how late an
    # installment was settled counts from the settlement's date (late_drift is raised on it,
    # not the day before, as tonight's close and a catch-up raise it). Settled: no more than
    # the arrears tolerance left unpaid, as for a miss.
    unpaid = delinquency.unpaid_now_sql() if every_payment else delinquency.unpaid_sql(as_of_sql)
    settled_on = case((i.settled_on <= as_of_sql, i.settled_on))
    late = days_between(as_of_sql, i.due_date)
    one_loan = scope_kind == "loan"
    scope = _scope(scope_kind, has_low, has_high)
    changed = scope_kind == "changed"

    # One pass over the chunk's installments, newest first: the per-loan aggregates below and
    # the recent periods partial_payments needs all read this stream (PostgreSQL materialises
    # it once), instead of a scan and a join of installments per feature.
    grace = product.grace_days
    newest_first: dict[str, Any] = {"partition_by": i.loan_id, "order_by": i.seq.desc()}
    # Raw values only: each comparison below runs once per installment, in the aggregate.
    stream = (
        select(
            i.loan_id,
            i.seq,
            i.due_date,
            settled_on.label("settled_on"),
            grace.label("grace_days"),
            late.label("late"),
            unpaid.label("unpaid"),
            tolerance.label("tolerance"),
            (i.principal_minor + i.interest_minor + i.fees_minor).label("due_amount"),
            # Rank among the settled installments, and among those past their grace.
            func.count(settled_on).over(**newest_first).label("settled_rank"),
            func.sum(case((late > grace, 1), else_=0)).over(**newest_first).label("closed_rank"),
            func.lead(i.due_date).over(**newest_first).label("previous_due_date"),
            func.lag(i.due_date).over(**newest_first).label("next_due_date"),
        )
        .select_from(
            LoanInstallment.__table__.join(Loan.__table__, loan.id == i.loan_id).join(
                Product.__table__, product.code == loan.product_code
            )
        )
        # The range on the loan side too, or PostgreSQL scans every loan per chunk.
        .where(
            scope(i.loan_id),
            scope(loan.id),
            loan.status.in_(OPEN_STATUSES),
            loan.id.in_(_may_change_overnight(scope)) if changed else true(),
        )
        .cte("installments")
    )
    s = stream.c

    def evaluated(column: Any) -> Any:
        # A chunk's payments are read whole unless only some of its loans are evaluated.
        return column.in_(select(s.loan_id)) if changed else true()

    first = s.seq == 1
    closed = s.late > s.grace_days
    missed = and_(s.late > 0, s.unpaid > s.tolerance)
    good = and_(closed, s.unpaid <= s.tolerance)
    early_default = and_(
        s.seq <= rules.early_payment_default_installments,
        s.late >= rules.early_payment_default_days,
        missed,
    )
    # late_drift: lateness of the newest settled installment and of the Nth newest.
    drift_window = rules.late_drift_installments

    def days_late_if(condition: Any) -> Any:
        settled_late = days_between(s.settled_on, s.due_date)
        return case(
            (
                and_(condition, s.settled_on.is_not(None)),
                case((settled_late > 0, settled_late), else_=0),
            )
        )

    per_loan = (
        select(
            s.loan_id,
            func.max(case((first, s.due_date))).label("first_due_date"),
            func.max(case((and_(first, missed), s.late))).label("first_late"),
            func.max(case((first, s.unpaid), else_=0)).label("first_unpaid"),
            func.min(case((early_default, s.seq))).label("early_default_seq"),
            func.min(case((early_default, s.due_date))).label("early_default_due_date"),
            func.max(case((closed, s.seq))).label("latest_due_seq"),
            func.max(case((closed, s.due_date))).label("latest_due_date"),
            func.max(case((good, s.seq))).label("last_good_seq"),
            # The due date of the installment after the newest good one: the missed run's first.
            func.max(case((good, s.next_due_date))).label("after_good_due_date"),
            func.max(days_late_if(s.settled_rank == 1)).label("last_late"),
            func.max(days_late_if(s.settled_rank == drift_window)).label("first_late_of_window"),
            # The installments at both ends of the window and when each was settled.
            func.max(case((s.settled_rank == 1, s.seq))).label("last_settled_seq"),
            func.max(case((s.settled_rank == 1, s.settled_on))).label("last_settled_on"),
            func.max(case((s.settled_rank == drift_window, s.seq))).label("window_first_seq"),
            func.max(case((s.settled_rank == drift_window, s.settled_on))).label("window_first_on"),
        )
        .group_by(s.loan_id)
        .subquery()
    )
    # partial_payments: what the borrower paid in each of the last N periods past their
    # grace. A period runs from the previous installment's due date + grace (exclusive) to
    # this one's (inclusive): each payment belongs to the first installment still open to it.
    # A completed repayment plan settled the arrears it was agreed for: the periods that
    # closed before it completed are no longer partial (the flag came back for them the day
    # the plan was completed: a tester's). A broken plan leaves them counting.
    pr = Promise.__table__.c
    completed_plans = (
        select(pr.loan_id, func.max(pr.kept_on).label("completed_on"))
        .where(scope(pr.loan_id), pr.restructure_id.is_not(None))
        .group_by(pr.loan_id, pr.restructure_id)
        .having(func.sum(case((pr.status != PromiseStatus.KEPT.value, 1), else_=0)) == 0)
        .subquery()
    )
    plans_completed = (
        select(
            completed_plans.c.loan_id,
            func.max(completed_plans.c.completed_on).label("completed_on"),
        )
        .group_by(completed_plans.c.loan_id)
        .subquery()
    )
    recent = (
        select(s.loan_id, s.seq, s.due_date, s.previous_due_date, s.grace_days, s.due_amount)
        .select_from(stream.outerjoin(plans_completed, plans_completed.c.loan_id == s.loan_id))
        .where(
            closed,
            s.closed_rank <= rules.partial_payment_periods,
            or_(
                plans_completed.c.completed_on.is_(None),
                days_between(plans_completed.c.completed_on, s.due_date) < s.grace_days,
            ),
        )
        .subquery()
    )
    p = Payment.__table__.c
    applied = and_(
        p.status == PaymentStatus.APPLIED.value,
        true() if every_payment else p.received_on <= as_of_sql,
    )
    # Periods are disjoint, so each payment meets at most one recent installment.
    in_period = and_(
        recent.c.loan_id == p.loan_id,
        days_between(p.received_on, recent.c.due_date) <= recent.c.grace_days,
        or_(
            recent.c.previous_due_date.is_(None),
            days_between(p.received_on, recent.c.previous_due_date) > recent.c.grace_days,
        ),
    )
    reversed_lately = _counted_reversal(p, as_of_sql)
    per_period = (
        select(
            p.loan_id,
            recent.c.seq,
            recent.c.due_amount,
            func.sum(case((applied, 1), else_=0)).label("settled"),
            func.sum(case((reversed_lately, 1), else_=0)).label("reversals"),
            # The evidence: every reversal counted, and the latest (ids sort by creation).
            func.aggregate_strings(case((reversed_lately, p.id)), ",").label("reversed_ids"),
            func.max(case((reversed_lately, p.id))).label("last_reversed_id"),
            func.max(case((reversed_lately, p.reversed_on))).label("last_reversed_on"),
            func.sum(case((applied, p.amount_minor), else_=0)).label("paid"),
        )
        .select_from(Payment.__table__.outerjoin(recent, in_period))
        .where(scope(p.loan_id), evaluated(p.loan_id))
        .group_by(p.loan_id, recent.c.seq, recent.c.due_amount)
        .subquery()
    )
    ratio_ppm = int(rules.partial_payment_ratio * 1_000_000)
    too_little = and_(
        per_period.c.seq.is_not(None),
        per_period.c.paid > 0,
        per_period.c.paid * 1_000_000 < per_period.c.due_amount * ratio_ppm,
    )
    payments = (
        select(
            per_period.c.loan_id,
            func.sum(per_period.c.settled).label("settled"),
            func.sum(per_period.c.reversals).label("reversals"),
            func.aggregate_strings(per_period.c.reversed_ids, ",").label("reversed_ids"),
            func.max(per_period.c.last_reversed_id).label("last_reversed_id"),
            func.max(per_period.c.last_reversed_on).label("last_reversed_on"),
            func.sum(case((too_little, 1), else_=0)).label("partial_periods"),
            func.aggregate_strings(case((too_little, cast(per_period.c.seq, String))), ",").label(
                "partial_seqs"
            ),
            func.max(case((too_little, per_period.c.seq))).label("last_partial_seq"),
        )
        .group_by(per_period.c.loan_id)
        .subquery()
    )
    fd = FailedDebit.__table__.c
    debits = (
        select(
            fd.loan_id,
            func.count().label("failed"),
            func.aggregate_strings(fd.id, ",").label("failed_ids"),
            func.max(fd.id).label("last_failed_id"),
            func.max(fd.attempted_on).label("last_failed_on"),
        )
        .where(scope(fd.loan_id), _counted_failed_debit(fd, as_of_sql))
        .group_by(fd.loan_id)
        .subquery()
    )
    # broken_promise: the promises broken within the window, the latest first.
    recently_broken = (
        select(
            pr.loan_id, pr.id, pr.currency, pr.amount_minor, pr.paid_minor, pr.due_on,
            pr.broken_on, pr.restructure_id, pr.plan_seq,
            func.row_number()
            .over(partition_by=pr.loan_id, order_by=(pr.broken_on.desc(), pr.id.desc()))
            .label("newest"),
            func.count().over(partition_by=pr.loan_id).label("broken_count"),
        )
        .where(
            scope(pr.loan_id),
            pr.status == PromiseStatus.BROKEN.value,
            pr.broken_on > bindparam("broken_after", type_=Date),
            pr.broken_on <= as_of_sql,
        )
        .subquery()
    )  # fmt: skip
    broken = select(recently_broken).where(recently_broken.c.newest == 1).subquery()
    # partial_payments rests while an approved repayment plan runs.
    running_plans = (
        select(pr.loan_id)
        .where(
            scope(pr.loan_id),
            pr.restructure_id.is_not(None),
            pr.status == PromiseStatus.OPEN.value,
        )
        .group_by(pr.loan_id)
        .subquery()
    )
    # multi_loan_delinquency looks at a borrower's other loans only when this one is late: a
    # lookup by borrower for those rows, whatever the planner thinks of the chunk's size. The
    # ids, not a count: the evidence names them.
    other = Loan.__table__.alias("other")
    counted = [
        other.c.borrower_id == loan.borrower_id,
        other.c.days_past_due > 0,
        other.c.status.in_(OPEN_STATUSES),
    ]
    if one_loan:
        # Not another loan booked past due and not evaluated yet: the next imported payment
        # may end its arrears, and counted here they cut the borrower's limit as its own
        # evaluation would have (a re-verifier's). The close counts it, evaluating it too.
        counted.append(or_(~other.c.flags_deferred, other.c.id == loan.id))
    delinquent = case(
        (
            loan.days_past_due > 0,
            select(func.aggregate_strings(other.c.id, ",")).where(*counted).scalar_subquery(),
        ),
    )
    query = (
        select(
            loan.id,
            loan.borrower_id,
            loan.merchant_id,
            loan.product_code,
            loan.currency,
            loan.days_past_due,
            loan.bucket,
            loan.previous_bucket,
            loan.risk_score,
            loan.risk_grade,
            days_between(loan.relapsed_on, loan.relapse_cured_on).label("relapse_days"),
            loan.relapse_cured_on,
            loan.relapsed_on,
            per_loan.c.first_due_date,
            per_loan.c.first_late,
            per_loan.c.first_unpaid,
            per_loan.c.early_default_seq,
            per_loan.c.early_default_due_date,
            per_loan.c.latest_due_seq,
            per_loan.c.latest_due_date,
            per_loan.c.last_good_seq,
            per_loan.c.after_good_due_date,
            _whole(payments.c.settled).label("settled"),
            _whole(payments.c.reversals).label("reversals"),
            payments.c.reversed_ids,
            payments.c.last_reversed_id,
            payments.c.last_reversed_on,
            func.coalesce(debits.c.failed, 0).label("failed"),
            debits.c.failed_ids,
            debits.c.last_failed_id,
            debits.c.last_failed_on,
            delinquent.label("delinquent_ids"),
            per_loan.c.last_late,
            per_loan.c.first_late_of_window,
            per_loan.c.last_settled_seq,
            per_loan.c.last_settled_on,
            per_loan.c.window_first_seq,
            per_loan.c.window_first_on,
            _whole(payments.c.partial_periods).label("partial_periods"),
            payments.c.partial_seqs,
            payments.c.last_partial_seq,
            func.coalesce(broken.c.broken_count, 0).label("broken_promises"),
            broken.c.id.label("promise_id"),
            broken.c.currency.label("promise_currency"),
            broken.c.amount_minor.label("promise_amount"),
            broken.c.paid_minor.label("promise_paid"),
            broken.c.due_on.label("promise_due_on"),
            broken.c.broken_on.label("promise_broken_on"),
            broken.c.restructure_id.label("promise_restructure_id"),
            broken.c.plan_seq.label("promise_plan_seq"),
            running_plans.c.loan_id.is_not(None).label("plan_running"),
        )
        .select_from(
            Loan.__table__.join(per_loan, per_loan.c.loan_id == loan.id)
            .outerjoin(payments, payments.c.loan_id == loan.id)
            .outerjoin(debits, debits.c.loan_id == loan.id)
            .outerjoin(broken, broken.c.loan_id == loan.id)
            .outerjoin(running_plans, running_plans.c.loan_id == loan.id)
        )
        # Not a loan disbursed after the date (booked back-dated while the closes are behind),
        # nor one reckoned as of a later date (today's payment, and a risk run or a rerun of
        # the business date): that date's close decides its flags.
        .where(
            scope(loan.id),
            loan.status.in_(OPEN_STATUSES),
            loan.disbursed_on <= as_of_sql,
            or_(loan.delinquency_as_of.is_(None), loan.delinquency_as_of <= as_of_sql),
        )
    )
    if one_loan:
        return query
    # The batch skips loans no rule can flag and no score can move: nothing overdue, no
    # reversal, failed debit, partial period, late payment or broken promise, no flag open or
    # fading, and a perfect score already stored. The same rules on all the others;
    # tests/close/test_batch_agrees.py holds the per-loan path (no filter) to the same flags.
    perfect = score_loan(0, [], date.min)
    return query.where(
        or_(
            loan.days_past_due > 0,
            per_loan.c.first_late.is_not(None),
            per_loan.c.early_default_seq.is_not(None),
            per_loan.c.latest_due_seq > func.coalesce(per_loan.c.last_good_seq, 0),
            payments.c.reversals > 0,
            debits.c.failed > 0,
            payments.c.partial_periods > 0,
            per_loan.c.last_late > 0,
            broken.c.id.is_not(None),
            loan.risk_score != perfect.score,
            loan.risk_grade != perfect.grade,
            loan.id.in_(_flagged_loans(scope)),
        )
    )


async def evaluate_loans(
    session: AsyncSession,
    as_of: date,
    low: str | None = None,
    high: str | None = None,
    *,
    loan_id: str | None = None,
    changed_only: bool = False,
    in_force: tuple[int, RiskRules] | None = None,
    every_payment: bool = False,
) -> dict[str, int]:
    """Raise, escalate and clear the flags of the open loans in the range (or of one loan);
    ``changed_only``: of those the night may have changed, the others' flags are yesterday's.
    ``in_force``: the rules' version and thresholds, when the caller has read them already.
    ``every_payment``: count the payments received after ``as_of`` too."""
    version, rules = in_force or await current_rules(session)
    postgres = is_postgres(session)
    params = _features_params(as_of, rules, low, high, loan_id)
    scope_kind: Scope = "loan" if loan_id is not None else "range"
    if loan_id is None and postgres:
        # The loans are listed first: inside the features statement the planner sorts the
        # whole chunk's installments before it drops the others.
        scope_kind = "listed"
        bounds = (low is not None, high is not None)
        if changed_only:
            listed = (await session.execute(_changed_loans_query(*bounds), params)).all()
        else:
            listed = await _planned_for_a_chunk(session, _candidates_query(*bounds), params)
        params["loan_ids"] = [row[0] for row in listed]
    elif changed_only and loan_id is None:
        scope_kind = "changed"
    query = _features_query(
        rules.model_dump_json(), get_settings().close.arrears_tolerance, scope_kind,
        low is not None, high is not None, every_payment,
    )  # fmt: skip
    if scope_kind == "listed" and not params["loan_ids"]:
        rows: list[Any] = []
    elif loan_id is None and postgres:
        rows = await _planned_for_a_chunk(session, query, params)
    else:
        rows = list((await session.execute(query, params)).all())
    wanted: dict[tuple[str, str], tuple[Severity, dict[str, object], str]] = {}
    for row in rows:
        delinquent_ids = _ids(row.delinquent_ids)
        features = LoanFeatures(
            loan_id=row.id, borrower_id=row.borrower_id, days_past_due=row.days_past_due,
            bucket=row.bucket, previous_bucket=row.previous_bucket,
            cured_days_before_relapse=row.relapse_days,
            first_due_date=str(row.first_due_date) if row.first_due_date else None,
            first_installment_days_late=row.first_late,
            first_installment_unpaid_minor=row.first_unpaid or 0, currency=row.currency,
            early_default_seq=row.early_default_seq, latest_due_seq=row.latest_due_seq,
            last_good_seq=row.last_good_seq, settled_payments=row.settled,
            early_default_due_date=_day(row.early_default_due_date),
            latest_due_date=_day(row.latest_due_date),
            missed_since=_day(row.after_good_due_date or row.first_due_date),
            reversals=row.reversals, failed_debits=row.failed,
            borrower_delinquent_loans=len(delinquent_ids),
            last_settled_days_late=row.last_late,
            drift_window_first_days_late=row.first_late_of_window,
            last_settled_seq=row.last_settled_seq, last_settled_on=_day(row.last_settled_on),
            drift_window_first_seq=row.window_first_seq,
            drift_window_first_settled_on=_day(row.window_first_on),
            partial_periods=row.partial_periods, broken_promises=row.broken_promises,
            broken_promise=_broken_promise(row), plan_running=bool(row.plan_running),
            arrears_since=_day(as_of - timedelta(days=row.days_past_due))
            if row.days_past_due > 0 else None,
            cured_on=_day(row.relapse_cured_on), relapsed_on=_day(row.relapsed_on),
            last_reversed_payment_id=row.last_reversed_id,
            last_reversed_on=_day(row.last_reversed_on),
            last_failed_debit_id=row.last_failed_id, last_failed_on=_day(row.last_failed_on),
            last_partial_seq=row.last_partial_seq,
            reversed_payment_ids=_ids(row.reversed_ids), failed_debit_ids=_ids(row.failed_ids),
            partial_seqs=tuple(sorted(int(seq) for seq in _ids(row.partial_seqs))),
            delinquent_loan_ids=delinquent_ids,
        )  # fmt: skip
        for code, (severity, evidence) in evaluate(features, rules).items():
            wanted[(row.id, code.value)] = (severity, evidence, row.borrower_id)
    flag = typing_cast(Table, RiskFlag.__table__)
    flags_of = (
        flag.c.loan_id == loan_id
        if loan_id is not None
        else delinquency.in_range(flag.c.loan_id, low, high)
    )
    # Only what the diff needs (the rest is read back for the flags cleared).
    open_query = select(
        flag.c.id, flag.c.loan_id, flag.c.code, flag.c.severity, flag.c.evidence, flag.c.raised_on
    ).where(flags_of, flag.c.status == FlagStatus.OPEN.value)
    # The flags of loans reckoned as of a later date are that date's, as the loans are.
    later = set() if loan_id is not None else set(
        await session.scalars(
            select(Loan.id).where(
                delinquency.in_range(Loan.id, low, high), Loan.delinquency_as_of > as_of
            )
        )
    )  # fmt: skip
    open_flags = {
        (f.loan_id, f.code): f for f in await session.execute(open_query) if f.loan_id not in later
    }
    # A flag raised on a later date (a payment today reckoned its loan as of today, before the
    # close of yesterday ran) is that date's: evaluated as of an earlier one it is neither
    # cleared, before it was raised, nor restated; the close of its own date decides.
    settled = {key: f for key, f in open_flags.items() if f.raised_on <= as_of}
    # Bulk writes: a first close over a large book raises hundreds of thousands of flags.
    ending = [f.id for key, f in settled.items() if key not in wanted]
    # A flag still open is restated when its severity or its evidence's facts moved (a third
    # failed debit, one delinquent loan fewer), not for a day's more lateness.
    restated = [
        {"id": f.id, "severity": wanted[key][0].value,
         "evidence": _evidence(wanted[key][1], as_of)}
        for key, f in settled.items()
        if key in wanted and (wanted[key][0] != f.severity
                              or _facts(wanted[key][1]) != _facts(f.evidence))
    ]  # fmt: skip
    # The severity each flag whose severity moved had: its event says so.
    escalated = {f.id: f.severity for key, f in settled.items()
                 if key in wanted and wanted[key][0] != f.severity}  # fmt: skip
    # What every flag raised now shares is bound once, not per flag.
    opened = {"status": FlagStatus.OPEN.value, "raised_on": as_of, "cleared_on": None,
              "rules_version": version, "acknowledged": False, "acknowledged_at": None,
              "acknowledged_note": None, "created_at": utc_now()}  # fmt: skip
    raising = [(key, flag) for key, flag in wanted.items() if key not in open_flags]
    raised: list[dict[str, Any]] = [
        {"id": flag_id, "loan_id": loan, "borrower_id": borrower, "code": code,
         "severity": severity.value, "evidence": _evidence(evidence, as_of)}
        for flag_id, ((loan, code), (severity, evidence, borrower))
        in zip(new_ids("flag", len(raising)), raising, strict=True)
    ]  # fmt: skip
    cleared: list[Any] = []
    for ids in _batches(ending):
        cleared += await session.execute(
            update(flag)
            .where(flag.c.id.in_(ids))
            .values(status=FlagStatus.CLEARED.value, cleared_on=as_of)
            .returning(*flag.c)
        )
    # In the order they were raised: RETURNING has none, and PostgreSQL and SQLite told one
    # loan's two cleared flags in opposite orders (a tester's).
    cleared.sort(key=lambda f: f.id)
    await update_rows(session, flag, "id", restated)
    await insert_rows(session, flag, raised, same=opened)
    await _emit_flag_events(
        session,
        [*[("risk.flag_cleared", f._mapping) for f in cleared],
         *[("risk.flag_raised", ChainMap(f, opened)) for f in raised]],
    )  # fmt: skip
    await _emit_severity_changes(session, escalated)
    await portfolio.record_flag_changes(
        session,
        opened=[(f["loan_id"], f["code"]) for f in raised],
        closed=[(f.loan_id, f.code) for f in cleared],
        segments={row.id: (row.merchant_id, row.product_code, row.currency) for row in rows},
    )
    # What is open now is what the rules want: the scores need not read it back.
    open_now = [
        (*key, severity.value, open_flags[key].raised_on if key in open_flags else as_of)
        for key, (severity, _, _) in wanted.items()
    ]
    await grades.score_loans(session, as_of, rows, open_now, flags_of)
    if loan_id is None:
        # Evaluated with the range: from now on their payments are evaluated at once. Not one
        # disbursed after the date, which no rule has looked at yet.
        await session.execute(
            update(Loan)
            .where(
                Loan.flags_deferred,
                Loan.disbursed_on <= as_of,
                delinquency.in_range(Loan.id, low, high),
            )
            .values(flags_deferred=False)
        )
    return {"loans_evaluated": len(rows), "flags_raised": len(raised),
            "flags_cleared": len(cleared), "flags_changed": len(restated)}  # fmt: skip


async def evaluate_overnight(
    session: AsyncSession, as_of: date, low: str | None, high: str | None
) -> dict[str, int]:
    """The close's risk step: when yesterday's close evaluated every loan under the rules in
    force, only the loans one day may have changed; otherwise (the first close, a close after
    a gap or after new rules) every open loan."""
    return await evaluate_loans(
        session, as_of, low, high, changed_only=await _evaluated_yesterday(session, as_of)
    )


async def _evaluated_yesterday(session: AsyncSession, as_of: date) -> bool:
    yesterday = await session.get(CloseRun, as_of - timedelta(days=1))
    if yesterday is None or yesterday.status != CloseStatus.SUCCEEDED:
        return False
    risk_started = yesterday.steps.get("risk", {}).get("started_at")
    if risk_started is None:
        return False
    rules_changed_at = await session.scalar(select(func.max(RiskRulesVersion.created_at)))
    return rules_changed_at is None or rules_changed_at < datetime.fromisoformat(risk_started)


async def _planned_for_a_chunk(
    session: AsyncSession, query: Any, params: dict[str, Any]
) -> list[Any]:
    """Run a chunk's features query, or the query listing its loans, with hash joins and room
    to sort in memory.

    PostgreSQL cannot estimate the windowed stream's rows (it guesses a few hundred for tens
    of thousands) and then joins the per-loan aggregates by nested loop, rescanning one side
    per loan: 16 s for a 20,000-loan chunk instead of about one. Every join here is over the
    whole chunk, so hash and merge joins are the right plan whatever the estimates say.
    """
    await session.execute(text("SET LOCAL enable_nestloop = off"))
    await session.execute(text("SET LOCAL work_mem = '64MB'"))
    rows = list((await session.execute(query, params)).all())
    await session.execute(text("SET LOCAL enable_nestloop TO DEFAULT"))
    await session.execute(text("SET LOCAL work_mem TO DEFAULT"))
    return rows


def _batches(ids: list[str], size: int = 5000) -> list[list[str]]:
    """Id lists short enough for one statement's parameters."""
    return [ids[n : n + size] for n in range(0, len(ids), size)]


def _broken_promise(row: Any) -> BrokenPromise | None:
    if row.promise_id is None:
        return None
    return BrokenPromise(
        promise_id=row.promise_id, currency=row.promise_currency,
        amount_minor=row.promise_amount, paid_minor=row.promise_paid,
        due_on=str(row.promise_due_on), broken_on=str(row.promise_broken_on),
        restructure_id=row.promise_restructure_id, plan_seq=row.promise_plan_seq,
    )  # fmt: skip


def _ids(joined: str | None) -> tuple[str, ...]:
    """The values a string aggregate joined with commas, sorted (neither engine orders them)."""
    return tuple(sorted(joined.split(","))) if joined else ()


def _day(value: date | str | None) -> str | None:
    """A date for the evidence, from a date or SQLite's text of one."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, date) else value[:10]


def _evidence(evidence: dict[str, object], as_of: date) -> dict[str, object]:
    return {**evidence, "as_of": as_of.isoformat()}


# Evidence that grows by itself every day the condition holds.
_DAILY = frozenset({"as_of", "days_late", "days_past_due"})


def _facts(evidence: Mapping[str, object]) -> dict[str, object]:
    """The evidence but for what changes every day: what a restatement is worth writing for."""
    return {key: value for key, value in evidence.items() if key not in _DAILY}


# PostgreSQL builds a flag's event from its row: a first close emits hundreds of thousands,
# and building and encoding each in Python was a fifth of the risk step's client time.
_FLAG_EVENTS = text(
    """
    INSERT INTO event (id, type, loan_id, data, created_at)
    SELECT v.event_id, v.type, f.loan_id,
           json_build_object('flag_id', f.id, 'loan_id', f.loan_id,
                             'borrower_id', f.borrower_id, 'merchant_id', l.merchant_id,
                             'code', f.code,
                             'severity', f.severity, 'status', f.status,
                             'raised_on', f.raised_on, 'cleared_on', f.cleared_on,
                             'evidence', f.evidence, 'rules_version', f.rules_version),
           :created_at
    FROM unnest(:event_ids, :types, :flag_ids) WITH ORDINALITY AS v(event_id, type, flag_id, n)
    JOIN risk_flag AS f ON f.id = v.flag_id
    JOIN loan AS l ON l.id = f.loan_id
    ORDER BY v.n
    RETURNING position
    """
).bindparams(
    bindparam("event_ids", type_=postgresql.ARRAY(String)),
    bindparam("types", type_=postgresql.ARRAY(String)),
    bindparam("flag_ids", type_=postgresql.ARRAY(String)),
    bindparam("created_at", type_=DateTime(timezone=True)),
)


async def _emit_flag_events(
    session: AsyncSession, changes: list[tuple[str, Mapping[str, Any]]]
) -> None:
    """``risk.flag_raised`` or ``risk.flag_cleared`` for each flag, in order, as written: its
    data is ``flag_event_data`` of the row."""
    if not changes:
        return
    changes = sorted(changes, key=lambda change: change[1]["loan_id"])  # as events.emit_many
    if not is_postgres(session):
        merchants = await _merchants_of(session, {flag["loan_id"] for _, flag in changes})
        await events.emit_many(
            session,
            [{"type": type_, "loan_id": flag["loan_id"],
              "data": flag_event_data(flag, merchants[flag["loan_id"]])}
             for type_, flag in changes],
        )  # fmt: skip
        return
    positions = list(
        await session.scalars(
            _FLAG_EVENTS,
            {"event_ids": new_ids("evt", len(changes)),
             "types": [type_ for type_, _ in changes],
             "flag_ids": [flag["id"] for _, flag in changes], "created_at": utc_now()},
        )
    )  # fmt: skip
    await webhooks.fan_out(session, min(positions), max(positions))


async def _emit_severity_changes(
    session: AsyncSession, previous_severity: Mapping[str, str]
) -> None:
    """``risk.flag_severity_changed`` for each flag whose severity moved while it stayed open:
    the flag as ``flag_event_data`` and the severity it had. A few thousand on a night, not the
    first night's hundreds of thousands of raises, so built in Python on either database."""
    flag = typing_cast(Table, RiskFlag.__table__)
    changed = []
    for ids in _batches(list(previous_severity)):
        rows = await session.execute(
            select(flag, Loan.merchant_id)
            .join(Loan, Loan.id == flag.c.loan_id)
            .where(flag.c.id.in_(ids))
        )
        for row in rows:
            data = {
                **flag_event_data(row._asdict(), row.merchant_id),
                "previous_severity": previous_severity[row.id],
            }
            changed.append({"type": "risk.flag_severity_changed", "loan_id": row.loan_id,
                            "data": data})  # fmt: skip
    # One loan's in the order of their codes: the rows come in the database's order.
    await events.emit_many(session, sorted(changed, key=lambda e: e["data"]["code"]))


async def _merchants_of(session: AsyncSession, loan_ids: set[str]) -> dict[str, str]:
    merchants: dict[str, str] = {}
    for ids in _batches(sorted(loan_ids)):
        merchants.update(
            (await session.execute(select(Loan.id, Loan.merchant_id).where(Loan.id.in_(ids))))
            .tuples()
            .all()
        )
    return merchants


def flag_event_data(flag: Mapping[str, Any], merchant_id: str) -> dict[str, Any]:
    """What ``risk.flag_raised``, ``risk.flag_cleared`` and ``risk.flag_severity_changed``
    carry: the flag and its loan's merchant, as every loan event has it (a collections
    system routes by merchant without a call back)."""
    return {
        "flag_id": flag["id"],
        "loan_id": flag["loan_id"],
        "borrower_id": flag["borrower_id"],
        "merchant_id": merchant_id,
        "code": flag["code"],
        "severity": flag["severity"],
        "status": flag["status"],
        "raised_on": flag["raised_on"].isoformat(),
        "cleared_on": flag["cleared_on"].isoformat() if flag["cleared_on"] else None,
        "evidence": flag["evidence"],
        "rules_version": flag["rules_version"],
    }


async def refresh_loan(session: AsyncSession, loan: Loan, as_of: date) -> None:
    """The real-time path: re-evaluate one loan after a payment, reversal or failed debit, and
    re-grade its borrower, as of the caller's reckoning date, counting every payment recorded
    as its delinquency does: a borrower who paid today is not flagged, re-graded or cut on
    arrears their payment ended (tonight's close counts it the same way).

    Not before the first close: flags are raised on business dates, and the first close may
    be for a date before today, when flags raised as of today would be cleared on a day before
    they were raised. The first close (or an on-demand run) evaluates every open loan. Once an
    on-demand run has, as of today, every change is evaluated as after a close: left alone,
    the run's flags outlived the arrears paid, or the loan cancelled, and the grade with them;
    and a bounce of that payment raised nothing (a tester's, then a re-verifier's)."""
    if await delinquency.closing_date(session) is None and not await _evaluated_by_a_run(session):
        return
    if loan.flags_deferred:
        # Booked past due, not evaluated since: a history brought in goes in payment by
        # payment, and each step evaluated alone would flag, re-grade and cut the borrower on
        # arrears the next one loaded ends (a tester's: five installments paid on their due
        # dates left grade D and a ninth of the limit). The next close or run evaluates it.
        return
    if loan.delinquency_as_of is not None and loan.delinquency_as_of > as_of + timedelta(days=1):
        # Reckoned as of a date beyond the next one to close (booked before the first close,
        # disbursed after the dates closed so far): the flags of that date would be raised on
        # a day the closes reach only later, and none before it could clear them (a tester's:
        # a failed debit raised five on a loan the closes then found 5 days past due). The
        # close of its dates evaluates it.
        return
    # Never as of a day before the loan is reckoned as of (a cancellation or a promise after
    # today's payment): its flags would be cleared, or raised again, on the day before.
    as_of = max(as_of, loan.delinquency_as_of or as_of)
    await session.flush()
    in_force = await current_rules(session)
    await evaluate_loans(session, as_of, loan_id=loan.id, in_force=in_force, every_payment=True)
    await grades.grade_borrowers(
        session, as_of, borrower_id=loan.borrower_id, rules=in_force[1], because_of=loan.id
    )


async def _evaluated_by_a_run(session: AsyncSession) -> bool:
    started = select(RiskRun.id).where(RiskRun.started_at.is_not(None)).limit(1)
    return await session.scalar(started) is not None


async def list_flags(
    session: AsyncSession,
    principal: Principal,
    *,
    page: PageParams,
    status: FlagStatus | None,
    code: FlagCode | None,
    severity: Severity | None,
    borrower_id: str | None,
    loan_id: str | None = None,
) -> list[RiskFlag]:
    principal.require(Role.MERCHANT, Role.DASHBOARD)
    query = select(RiskFlag).order_by(RiskFlag.id).limit(page.limit + 1)
    if principal.is_merchant:
        query = query.join(Loan, Loan.id == RiskFlag.loan_id).where(
            Loan.merchant_id == principal.merchant_id
        )
    for column, value in (
        (RiskFlag.status, status), (RiskFlag.code, code), (RiskFlag.severity, severity),
        (RiskFlag.borrower_id, borrower_id), (RiskFlag.loan_id, loan_id),
    ):  # fmt: skip
        if value is not None:
            query = query.where(column == value)
    if page.after_id:
        query = query.where(RiskFlag.id > page.after_id)
    return list(await session.scalars(query))


async def acknowledge(
    session: AsyncSession, principal: Principal, *, flag_id: str, note: str | None
) -> RiskFlag:
    principal.require(Role.MERCHANT)
    flag = await session.get(RiskFlag, flag_id, with_for_update=True)
    if flag is None:
        raise RiskFlagNotFound(f"risk flag {flag_id} does not exist")
    if principal.is_merchant:
        loan = await session.get(Loan, flag.loan_id)
        if loan is None or loan.merchant_id != principal.merchant_id:
            raise RiskFlagNotFound(f"risk flag {flag_id} does not exist")
    if flag.acknowledged:
        # The first acknowledgement and its note stand: a second is a conflict, not new input.
        raise RiskFlagAlreadyAcknowledged(f"risk flag {flag_id} is acknowledged already")
    flag.acknowledged, flag.acknowledged_at, flag.acknowledged_note = True, utc_now(), note
    return flag


async def open_flags_of(session: AsyncSession, *, loan_ids: list[str]) -> list[RiskFlag]:
    return list(
        await session.scalars(
            select(RiskFlag)
            .where(RiskFlag.loan_id.in_(loan_ids), RiskFlag.status == FlagStatus.OPEN)
            .order_by(RiskFlag.id)
        )
    )


async def loan_risk(
    session: AsyncSession, principal: Principal, *, loan_id: str
) -> tuple[date, Score, list[RiskFlag]]:
    from app.loans import service as loans_service

    loan = await loans_service.get_loan(session, principal, loan_id=loan_id)
    # As of the date the loan is reckoned as of, when a payment dated after the business date
    # moved it there: the date its stored score and its flags' clearing are from.
    as_of = max(await delinquency.delinquency_date(session), loan.delinquency_as_of or date.min)
    flags = list(
        await session.scalars(
            select(RiskFlag).where(RiskFlag.loan_id == loan.id).order_by(RiskFlag.id.desc())
        )
    )
    facts = [FlagFact(f.code, f.severity, f.cleared_on, f.raised_on) for f in flags]
    return as_of, score_loan(loan.days_past_due, facts, as_of), flags
