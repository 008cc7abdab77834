"""The early-warning engine: per-loan features in SQL, the rules of ``rules.py`` over them,
and flags raised once per episode and cleared when the condition ends — each an event.

The nightly close runs it over loan-id chunks after delinquency; a payment, reversal or failed
debit runs the very same code for its one loan, in its own transaction.
"""

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import (
    Date,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.db import days_between, utc_now
from app.delinquency import service as delinquency
from app.errors import InvalidRequest, NotFound
from app.events import service as events
from app.gateways.models import FailedDebit
from app.ids import new_id
from app.loans.models import OPEN_STATUSES, Loan, LoanInstallment
from app.payments.models import Payment, PaymentStatus, ReversalReason
from app.portfolio import positions as portfolio
from app.products.models import Product
from app.promises.models import Promise, PromiseStatus
from app.risk import grades
from app.risk.models import FlagStatus, RiskFlag, RiskRulesVersion
from app.risk.rules import BrokenPromise, FlagCode, LoanFeatures, RiskRules, Severity, evaluate
from app.risk.score import FADE_DAYS, FlagFact, Score, score_loan


class RiskFlagNotFound(NotFound):
    code = "risk_flag_not_found"


async def current_rules(session: AsyncSession) -> tuple[int, RiskRules]:
    """The rules in force and their version (0: the defaults, never changed)."""
    latest = await session.scalar(
        select(RiskRulesVersion).order_by(RiskRulesVersion.version.desc()).limit(1)
    )
    if latest is None:
        return 0, RiskRules()
    return latest.version, RiskRules.model_validate(latest.rules)


async def get_rules(session: AsyncSession, principal: Principal) -> tuple[int, RiskRules]:
    principal.require(Role.DASHBOARD)
    return await current_rules(session)


async def put_rules(
    session: AsyncSession, principal: Principal, *, rules: RiskRules
) -> tuple[int, RiskRules]:
    """A new version; it applies from the next evaluation (run, payment or close)."""
    principal.require(Role.ADMIN)
    version, _ = await current_rules(session)
    session.add(
        RiskRulesVersion(
            version=version + 1, rules=rules.model_dump(mode="json"), created_at=utc_now(),
            created_by=principal.api_key_id,
        )
    )  # fmt: skip
    await session.flush()
    return version + 1, rules


def _features_query(
    as_of: date, rules: RiskRules, low: str | None, high: str | None, loan_id: str | None
) -> Any:
    i, loan, product = LoanInstallment.__table__.c, Loan.__table__.c, Product.__table__.c
    unpaid = delinquency.unpaid_sql()
    tolerance = delinquency.tolerance_sql()
    as_of_sql = literal(as_of, Date)
    late = days_between(as_of_sql, i.due_date)
    missed = and_(i.due_date < as_of_sql, unpaid > tolerance)

    def scope(column: Any) -> Any:
        return column == loan_id if loan_id is not None else delinquency.in_range(column, low, high)

    per_loan = (
        select(
            i.loan_id,
            func.max(case((i.seq == 1, i.due_date))).label("first_due_date"),
            func.max(case((and_(i.seq == 1, missed), late))).label("first_late"),
            func.max(case((i.seq == 1, unpaid), else_=0)).label("first_unpaid"),
            func.min(
                case(
                    (
                        and_(
                            i.seq <= rules.early_payment_default_installments,
                            missed,
                            late >= rules.early_payment_default_days,
                        ),
                        i.seq,
                    )
                )
            ).label("early_default_seq"),
            func.max(case((late > product.grace_days, i.seq))).label("latest_due_seq"),
            func.max(case((and_(late > product.grace_days, unpaid <= tolerance), i.seq))).label(
                "last_good_seq"
            ),
        )
        .select_from(
            LoanInstallment.__table__.join(Loan.__table__, loan.id == i.loan_id).join(
                Product.__table__, product.code == loan.product_code
            )
        )
        # The range on the loan side too, or PostgreSQL scans every loan per chunk.
        .where(scope(i.loan_id), scope(loan.id), loan.status.in_(OPEN_STATUSES))
        .group_by(i.loan_id)
        .subquery()
    )
    p = Payment.__table__.c
    reversal_cutoff = datetime.combine(as_of - timedelta(days=rules.payment_reversal_days),
                                       time(), UTC)  # fmt: skip
    payments = (
        select(
            p.loan_id,
            func.sum(case((p.status == PaymentStatus.APPLIED.value, 1), else_=0)).label("settled"),
            func.sum(
                case(
                    (
                        and_(
                            p.status == PaymentStatus.REVERSED.value,
                            p.reversal_reason.in_(
                                (ReversalReason.NSF.value, ReversalReason.CHARGEBACK.value)
                            ),
                            p.reversed_at >= reversal_cutoff,
                        ),
                        1,
                    ),
                    else_=0,
                )
            ).label("reversals"),
        )
        .where(scope(p.loan_id))
        .group_by(p.loan_id)
        .subquery()
    )
    fd = FailedDebit.__table__.c
    debits = (
        select(fd.loan_id, func.count().label("failed"))
        .where(
            scope(fd.loan_id),
            fd.attempted_on > as_of - timedelta(days=rules.failed_debits_days),
            fd.attempted_on <= as_of,
        )
        .group_by(fd.loan_id)
        .subquery()
    )
    # late_drift: lateness of the last N settled installments, newest first.
    drift_window = rules.late_drift_installments
    settled = (
        select(
            i.loan_id,
            case(
                (days_between(i.paid_on, i.due_date) > 0, days_between(i.paid_on, i.due_date)),
                else_=0,
            ).label("days_late"),
            func.row_number().over(partition_by=i.loan_id, order_by=i.seq.desc()).label("newest"),
        )
        .where(scope(i.loan_id), i.paid_on.is_not(None))
        .subquery()
    )
    drift = (
        select(
            settled.c.loan_id,
            func.max(case((settled.c.newest == 1, settled.c.days_late))).label("last_late"),
            func.max(case((settled.c.newest == drift_window, settled.c.days_late))).label(
                "first_late_of_window"
            ),
        )
        .where(settled.c.newest <= drift_window)
        .group_by(settled.c.loan_id)
        .subquery()
    )
    # partial_payments: what the borrower paid in each installment's period — after the
    # previous installment's due date + grace, up to this one's — over the last N periods.
    # Each payment belongs to the first installment still open to it (received by its due
    # date + grace): due dates increase, so that is the period after the previous one's.
    pay = Payment.__table__.c
    periods = (
        select(pay.loan_id, pay.amount_minor, func.min(i.seq).label("seq"))
        .select_from(
            Payment.__table__.join(LoanInstallment.__table__, i.loan_id == pay.loan_id)
            .join(Loan.__table__, loan.id == pay.loan_id)
            .join(Product.__table__, product.code == loan.product_code)
        )
        .where(
            scope(pay.loan_id),
            scope(i.loan_id),
            scope(loan.id),
            pay.status == PaymentStatus.APPLIED.value,
            days_between(pay.received_on, i.due_date) <= product.grace_days,
        )
        .group_by(pay.id, pay.loan_id, pay.amount_minor)
        .subquery()
    )
    in_period = (
        select(periods.c.loan_id, periods.c.seq, func.sum(periods.c.amount_minor).label("paid"))
        .group_by(periods.c.loan_id, periods.c.seq)
        .subquery()
    )
    recent = (
        select(
            i.loan_id,
            i.seq,
            (i.principal_minor + i.interest_minor + i.fees_minor).label("due_amount"),
            func.coalesce(in_period.c.paid, 0).label("paid"),
            func.row_number().over(partition_by=i.loan_id, order_by=i.seq.desc()).label("newest"),
        )
        .select_from(
            LoanInstallment.__table__.join(Loan.__table__, loan.id == i.loan_id)
            .join(Product.__table__, product.code == loan.product_code)
            .outerjoin(in_period, and_(in_period.c.loan_id == i.loan_id, in_period.c.seq == i.seq))
        )
        .where(scope(i.loan_id), scope(loan.id), late > product.grace_days)
        .subquery()
    )
    ratio_ppm = int(rules.partial_payment_ratio * 1_000_000)
    partial = (
        select(
            recent.c.loan_id,
            func.sum(
                case(
                    (
                        and_(
                            recent.c.paid > 0,
                            recent.c.paid * 1_000_000 < recent.c.due_amount * ratio_ppm,
                        ),
                        1,
                    ),
                    else_=0,
                )
            ).label("partial_periods"),
        )
        .where(recent.c.newest <= rules.partial_payment_periods)
        .group_by(recent.c.loan_id)
        .subquery()
    )
    # broken_promise: the promises broken within the window, the latest first.
    pr = Promise.__table__.c
    recently_broken = (
        select(
            pr.loan_id, pr.id, pr.currency, pr.amount_minor, pr.paid_minor, pr.due_on,
            pr.broken_on,
            func.row_number()
            .over(partition_by=pr.loan_id, order_by=(pr.broken_on.desc(), pr.id.desc()))
            .label("newest"),
            func.count().over(partition_by=pr.loan_id).label("broken_count"),
        )
        .where(
            scope(pr.loan_id),
            pr.status == PromiseStatus.BROKEN.value,
            pr.broken_on > as_of - timedelta(days=rules.broken_promise_days),
            pr.broken_on <= as_of,
        )
        .subquery()
    )  # fmt: skip
    broken = select(recently_broken).where(recently_broken.c.newest == 1).subquery()
    other = Loan.__table__.alias("other")
    borrowers_in_scope = select(loan.borrower_id).where(scope(loan.id))
    delinquent = (
        select(other.c.borrower_id, func.count().label("delinquent"))
        .where(
            other.c.borrower_id.in_(borrowers_in_scope),
            other.c.days_past_due > 0,
            other.c.status.in_(OPEN_STATUSES),
        )
        .group_by(other.c.borrower_id)
        .subquery()
    )
    query = (
        select(
            loan.id,
            loan.borrower_id,
            loan.days_past_due,
            loan.bucket,
            loan.previous_bucket,
            case((loan.cured_on.is_not(None), days_between(as_of_sql, loan.cured_on))).label(
                "cured_days_ago"
            ),
            per_loan.c.first_due_date,
            per_loan.c.first_late,
            per_loan.c.first_unpaid,
            per_loan.c.early_default_seq,
            per_loan.c.latest_due_seq,
            per_loan.c.last_good_seq,
            func.coalesce(payments.c.settled, 0).label("settled"),
            func.coalesce(payments.c.reversals, 0).label("reversals"),
            func.coalesce(debits.c.failed, 0).label("failed"),
            func.coalesce(delinquent.c.delinquent, 0).label("delinquent"),
            drift.c.last_late,
            drift.c.first_late_of_window,
            func.coalesce(partial.c.partial_periods, 0).label("partial_periods"),
            func.coalesce(broken.c.broken_count, 0).label("broken_promises"),
            broken.c.id.label("promise_id"),
            broken.c.currency.label("promise_currency"),
            broken.c.amount_minor.label("promise_amount"),
            broken.c.paid_minor.label("promise_paid"),
            broken.c.due_on.label("promise_due_on"),
            broken.c.broken_on.label("promise_broken_on"),
        )
        .select_from(
            Loan.__table__.join(per_loan, per_loan.c.loan_id == loan.id)
            .outerjoin(payments, payments.c.loan_id == loan.id)
            .outerjoin(debits, debits.c.loan_id == loan.id)
            .outerjoin(delinquent, delinquent.c.borrower_id == loan.borrower_id)
            .outerjoin(drift, drift.c.loan_id == loan.id)
            .outerjoin(partial, partial.c.loan_id == loan.id)
            .outerjoin(broken, broken.c.loan_id == loan.id)
        )
        .where(scope(loan.id), loan.status.in_(OPEN_STATUSES))
    )
    if loan_id is not None:
        return query
    # The batch skips loans no rule can flag and no score can move: nothing overdue, no
    # reversal, failed debit, partial period, late payment or broken promise, no flag open or
    # fading, and a perfect score already stored. The same rules on all the others;
    # tests/close/test_batch_agrees.py holds the per-loan path (no filter) to the same flags.
    rf = RiskFlag.__table__.c
    flag_history = (
        select(rf.loan_id)
        .where(
            rf.loan_id == loan.id,
            scope(rf.loan_id),
            or_(rf.status == FlagStatus.OPEN.value,
                rf.cleared_on > as_of - timedelta(days=FADE_DAYS)),
        )
        .exists()
    )  # fmt: skip
    perfect = score_loan(0, [], as_of)
    return query.where(
        or_(
            loan.days_past_due > 0,
            per_loan.c.first_late.is_not(None),
            per_loan.c.early_default_seq.is_not(None),
            per_loan.c.latest_due_seq > func.coalesce(per_loan.c.last_good_seq, 0),
            payments.c.reversals > 0,
            debits.c.failed > 0,
            partial.c.partial_periods > 0,
            drift.c.last_late > 0,
            broken.c.id.is_not(None),
            loan.risk_score != perfect.score,
            loan.risk_grade != perfect.grade,
            flag_history,
        )
    )


async def evaluate_loans(
    session: AsyncSession,
    as_of: date,
    low: str | None = None,
    high: str | None = None,
    *,
    loan_id: str | None = None,
) -> dict[str, int]:
    """Raise, escalate and clear the flags of the open loans in the range (or of one loan)."""
    version, rules = await current_rules(session)
    rows = (await session.execute(_features_query(as_of, rules, low, high, loan_id))).all()
    wanted: dict[tuple[str, str], tuple[Severity, dict[str, object], str]] = {}
    for row in rows:
        features = LoanFeatures(
            loan_id=row.id, borrower_id=row.borrower_id, days_past_due=row.days_past_due,
            bucket=row.bucket, previous_bucket=row.previous_bucket,
            cured_on_days_ago=row.cured_days_ago,
            first_due_date=str(row.first_due_date) if row.first_due_date else None,
            first_installment_days_late=row.first_late,
            first_installment_unpaid_minor=row.first_unpaid or 0,
            early_default_seq=row.early_default_seq, latest_due_seq=row.latest_due_seq,
            last_good_seq=row.last_good_seq, settled_payments=row.settled,
            reversals=row.reversals, failed_debits=row.failed,
            borrower_delinquent_loans=row.delinquent,
            last_settled_days_late=row.last_late,
            drift_window_first_days_late=row.first_late_of_window,
            partial_periods=row.partial_periods, broken_promises=row.broken_promises,
            broken_promise=_broken_promise(row),
        )  # fmt: skip
        for code, (severity, evidence) in evaluate(features, rules).items():
            wanted[(row.id, code.value)] = (severity, evidence, row.borrower_id)
    flag = cast(Table, RiskFlag.__table__)
    open_query = select(flag).where(flag.c.status == FlagStatus.OPEN.value)
    if loan_id is not None:
        open_query = open_query.where(flag.c.loan_id == loan_id)
    else:
        open_query = open_query.where(delinquency.in_range(flag.c.loan_id, low, high))
    open_flags = {(f.loan_id, f.code): f for f in await session.execute(open_query)}
    # Bulk writes: a first close over a large book raises hundreds of thousands of flags.
    cleared = [f for key, f in open_flags.items() if key not in wanted]
    escalated = [
        {"f_id": f.id, "f_severity": wanted[key][0].value,
         "f_evidence": _evidence(wanted[key][1], as_of)}
        for key, f in open_flags.items()
        if key in wanted and wanted[key][0] != f.severity
    ]  # fmt: skip
    now = utc_now()
    raised: list[dict[str, Any]] = [
        {"id": new_id("flag"), "loan_id": loan, "borrower_id": borrower, "code": code,
         "severity": severity.value, "status": FlagStatus.OPEN.value, "raised_on": as_of,
         "cleared_on": None, "evidence": _evidence(evidence, as_of), "rules_version": version,
         "acknowledged": False, "acknowledged_at": None, "acknowledged_note": None,
         "created_at": now}
        for (loan, code), (severity, evidence, borrower) in wanted.items()
        if (loan, code) not in open_flags
    ]  # fmt: skip
    for ids in _batches([f.id for f in cleared]):
        await session.execute(
            update(flag)
            .where(flag.c.id.in_(ids))
            .values(status=FlagStatus.CLEARED.value, cleared_on=as_of)
        )
    if escalated:
        await session.execute(
            update(flag)
            .where(flag.c.id == bindparam("f_id"))
            .values(severity=bindparam("f_severity"), evidence=bindparam("f_evidence")),
            escalated,
        )
    if raised:
        await session.execute(insert(flag), raised)
    await events.emit_many(
        session,
        [
            *[{"type": "risk.flag_cleared", "loan_id": f.loan_id,
               "data": flag_event_data({**f._mapping, "status": FlagStatus.CLEARED.value,
                                        "cleared_on": as_of})} for f in cleared],
            *[{"type": "risk.flag_raised", "loan_id": f["loan_id"], "data": flag_event_data(f)}
              for f in raised],
        ],
    )  # fmt: skip
    await portfolio.record_flag_changes(
        session,
        opened=[(f["loan_id"], f["code"]) for f in raised],
        closed=[(f.loan_id, f.code) for f in cleared],
    )
    await grades.score_loans(session, as_of, [row.id for row in rows])
    return {"loans_evaluated": len(rows), "flags_raised": len(raised),
            "flags_cleared": len(cleared), "flags_changed": len(escalated)}  # fmt: skip


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
    )  # fmt: skip


def _evidence(evidence: dict[str, object], as_of: date) -> dict[str, object]:
    return {**evidence, "as_of": as_of.isoformat()}


def flag_event_data(flag: Mapping[str, Any]) -> dict[str, Any]:
    """What ``risk.flag_raised`` and ``risk.flag_cleared`` carry."""
    return {
        "flag_id": flag["id"],
        "loan_id": flag["loan_id"],
        "borrower_id": flag["borrower_id"],
        "code": flag["code"],
        "severity": flag["severity"],
        "status": flag["status"],
        "raised_on": flag["raised_on"].isoformat(),
        "cleared_on": flag["cleared_on"].isoformat() if flag["cleared_on"] else None,
        "evidence": flag["evidence"],
        "rules_version": flag["rules_version"],
    }


async def refresh_loan(session: AsyncSession, loan: Loan) -> None:
    """The real-time path: re-evaluate one loan after a payment, reversal or failed debit, and
    re-grade its borrower."""
    await session.flush()
    as_of = await delinquency.delinquency_date(session)
    await evaluate_loans(session, as_of, loan_id=loan.id)
    await grades.grade_borrowers(session, as_of, borrower_id=loan.borrower_id)


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
        raise InvalidRequest.field("flag_id", "is acknowledged already")
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
    as_of = await delinquency.delinquency_date(session)
    flags = list(
        await session.scalars(
            select(RiskFlag).where(RiskFlag.loan_id == loan.id).order_by(RiskFlag.id.desc())
        )
    )
    facts = [FlagFact(f.code, f.severity, f.cleared_on) for f in flags]
    return as_of, score_loan(loan.days_past_due, facts, as_of), flags
