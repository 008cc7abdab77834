"""The set-based close and the per-loan path (rules.py, used by payments) agree on every loan
of randomized portfolios: the same days past due, bucket, status and late fees, and the same
risk flags and scores (the batch evaluates only loans some rule could flag); and on every
borrower: the same grade, reasons and credit limit. Payments may be received after the date
closed (recorded before the close): neither path counts them, and the close leaves each loan
as a replay of its payments over the fees it charged would."""

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from app.api.auth import Principal
from app.api_keys.models import Role
from app.borrowers import service as borrowers_service
from app.borrowers.models import Borrower
from app.close import service as close_service
from app.db import session_scope
from app.delinquency import rules
from app.delinquency import service as delinquency
from app.loans import service as loans_service
from app.loans.models import OPEN_STATUSES, Loan, LoanInstallment
from app.loans.schedule import default_first_due_date
from app.merchants import service as merchants_service
from app.models import Base
from app.payments import service as payments_service
from app.payments.allocation import LoanPosition, replay
from app.payments.errors import AmountExceedsPayoff
from app.products import service as products_service
from app.products.schemas import ProductCreate
from app.risk import grades
from app.risk import service as risk
from app.risk.models import FlagStatus, RiskFlag

ADMIN = Principal(api_key_id="test", role=Role.ADMIN)
START = date(2025, 6, 1)
POLICIES = {
    "FIX": rules.LateFeePolicy(grace_days=3, kind="fixed", amount_minor=2500),
    "PCT": rules.LateFeePolicy(grace_days=0, kind="percent", percent_ppm=50_000, cap_minor=1500),
}

payment = st.tuples(st.integers(0, 420), st.integers(1, 150), st.booleans())
loan = st.fixed_dictionaries({
    "product": st.sampled_from(sorted(POLICIES)),
    "principal": st.integers(50, 3000),
    "term": st.sampled_from([3, 6, 12]),
    "disbursed": st.integers(0, 200),
    "payments": st.lists(payment, max_size=6),
})  # fmt: skip


async def reset() -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with session_scope() as session:
        await session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


async def build(portfolio: list[dict[str, Any]]) -> None:
    async with session_scope() as session:
        merchant = await merchants_service.create_merchant(session, ADMIN, name="m")
        for code in POLICIES:
            fixed = {"kind": "fixed", "amount": "25.00"}
            percent = {"kind": "percent", "percent": "0.05", "cap_per_installment": "15.00"}
            fee = fixed if code == "FIX" else percent
            await products_service.create_product(session, ADMIN, spec=ProductCreate(
                code=code, name=code, annual_interest_rate="0.18",
                amortization="equal_installment", term_options=[3, 6, 12],
                grace_days=POLICIES[code].grace_days, late_fee=fee,
            ))  # fmt: skip
    today = date.today()
    for n, spec in enumerate(portfolio):
        disbursed = START + timedelta(days=spec["disbursed"])
        # A borrower per loan: a late one's grade cuts the limit for any next loan.
        async with session_scope() as session:
            borrower = await borrowers_service.create_borrower(
                session, ADMIN, external_id=f"b{n}", name="b", phone="+8613800138000",
                monthly_income="100000.00", merchant_id=merchant.id,
            )  # fmt: skip
        async with session_scope() as session:
            view = await loans_service.create_loan(
                session, ADMIN, borrower_id=borrower.borrower.id, product_code=spec["product"],
                principal_amount=f"{spec['principal']}.00", term=spec["term"],
                disbursed_on=disbursed, first_due_date=None, merchant_order_ref=f"o{n}",
            )  # fmt: skip
        for day, percent, reverse in spec["payments"]:
            received = min(disbursed + timedelta(days=day), today)
            amount = f"{max(spec['principal'] * percent // 1200, 1)}.00"
            try:
                async with session_scope() as session:
                    paid = await payments_service.record_payment(
                        session, ADMIN, loan_id=view.loan.id, amount=amount,
                        received_on=received, channel="pos", external_ref=None,
                    )  # fmt: skip
            except AmountExceedsPayoff:
                continue
            if reverse:
                async with session_scope() as session:
                    await payments_service.reverse_payment(
                        session, ADMIN, payment_id=paid.payment.id, reason="nsf",
                        reversed_on=received,
                    )  # fmt: skip


async def borrowers_agree(as_of: date) -> None:
    """Every borrower's grade is their worst open loan's, their reasons their open flags'
    codes; re-grading them as of the date they were graded, in bulk and one by one, changes
    no grade, reason or limit."""
    async with session_scope() as session:
        borrowers = select(
            Borrower.id, Borrower.risk_grade, Borrower.risk_reasons, Borrower.credit_limit_minor,
            Borrower.limit_before_cut_minor,
        )  # fmt: skip
        stored = {row.id: tuple(row) for row in await session.execute(borrowers)}
        worst = dict(
            (await session.execute(
                select(Loan.borrower_id, func.max(Loan.risk_grade))
                .where(Loan.status.in_(OPEN_STATUSES)).group_by(Loan.borrower_id)
            )).all()
        )  # fmt: skip
        codes: dict[str, set[str]] = {}
        for borrower_id, code in await session.execute(
            select(RiskFlag.borrower_id, RiskFlag.code).where(RiskFlag.status == FlagStatus.OPEN)
        ):
            codes.setdefault(borrower_id, set()).add(code)
        for borrower_id, (_, grade, reasons, _, _) in stored.items():
            assert grade == worst.get(borrower_id, "A"), borrower_id
            assert reasons == sorted(codes.get(borrower_id, ())), borrower_id
        unchanged = {"grades_changed": 0, "limits_changed": 0}
        assert await grades.grade_borrowers(session, as_of) == unchanged
        for borrower_id in stored:
            counts = await grades.grade_borrowers(session, as_of, borrower_id=borrower_id)
            assert counts == unchanged, borrower_id
        assert {row.id: tuple(row) for row in await session.execute(borrowers)} == stored
        await session.rollback()


async def positions_on(
    day: date, installments: dict[str, list[LoanInstallment]]
) -> tuple[dict[str, LoanPosition], dict[str, LoanPosition]]:
    """Each loan's replay over the ledger's fees: with the payments received by ``day``, and
    with all of them."""
    on_day, replayed = {}, {}
    async with session_scope() as session:
        for loan_id, rows in installments.items():
            terms, _ = await payments_service._terms(session, rows)
            payments = await payments_service._applied_payments(session, loan_id)
            on_day[loan_id] = replay(terms, [p for p in payments if p.received_on <= day])
            replayed[loan_id] = replay(terms, payments)
    return on_day, replayed


async def unpaid_after_grace(
    installments: dict[str, list[LoanInstallment]], grace_days: dict[str, int]
) -> dict[tuple[str, int], int]:
    """What each installment owed after the payments received by its last day of grace, the
    late fees charged on other installments by then paid first, as the close saw it; but no
    more than those payments fell short of the installments due by then, late fees aside (no
    pyramiding)."""
    unpaid = {}
    async with session_scope() as session:
        for loan_id, rows in installments.items():
            loan = await session.get_one(Loan, loan_id)
            terms, _ = await payments_service._terms(session, rows)
            payments = await payments_service._applied_payments(session, loan_id)
            for n, row in enumerate(rows):
                judged_on = rules.late_fee_judged_on(row.due_date, grace_days[loan_id])
                # The night's own fees come after: its close judges before charging them.
                before = [
                    replace(t, late_fees=tuple(f for f in t.late_fees if f.assessed_on < judged_on))
                    for t in terms
                ]
                position = await payments_service._replay(
                    session, loan, before, [p for p in payments if p.received_on <= judged_on]
                )
                due_through = sum(t.principal_minor + t.interest_minor + t.fees_minor
                                  for t in terms if t.due_date <= row.due_date)  # fmt: skip
                paid_by = sum(p.amount_minor for p in payments if p.received_on <= judged_on)
                unpaid[(loan_id, row.seq)] = min(
                    position.installments[n].left(judged_on), due_through - paid_by
                )
    return unpaid


async def installments_by_loan() -> dict[str, list[LoanInstallment]]:
    async with session_scope() as session:
        rows = list(
            await session.scalars(
                select(LoanInstallment).order_by(LoanInstallment.loan_id, LoanInstallment.seq)
            )
        )
    grouped: dict[str, list[LoanInstallment]] = {}
    for row in rows:
        grouped.setdefault(row.loan_id, []).append(row)
    return grouped


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    portfolio=st.lists(loan, min_size=1, max_size=8),
    # Days after some loan's first due date: the edges of grace and of every bucket, or any.
    lateness=st.one_of(
        st.sampled_from([0, 1, 2, 3, 4, 30, 31, 60, 61, 90, 91, 180, 181]), st.integers(0, 400)
    ),
    anchor=st.integers(0, 7),
)
async def test_batch_close_agrees_with_the_per_loan_rules(
    portfolio: list[dict[str, Any]], lateness: int, anchor: int
) -> None:
    await reset()
    await build(portfolio)
    disbursed = START + timedelta(days=portfolio[anchor % len(portfolio)]["disbursed"])
    first_due = default_first_due_date(disbursed)
    close_date = min(first_due + timedelta(days=lateness), date.today())
    before = await installments_by_loan()
    async with session_scope() as session:
        products = {loan.id: loan.product_code for loan in await session.scalars(select(Loan))}
        statuses = {loan.id: loan.status for loan in await session.scalars(select(Loan))}
    grace_days = {loan_id: POLICIES[code].grace_days for loan_id, code in products.items()}

    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=close_date)
    await close_service.run_dates_in_process(dates)
    after = await installments_by_loan()

    tolerance = delinquency.tolerance_minor("CNY")
    unpaid_after = await unpaid_after_grace(after, grace_days)
    for loan_id, rows in before.items():
        policy = POLICIES[products[loan_id]]
        open_ = statuses[loan_id] not in ("paid_off", "cancelled")
        for old, new in zip(rows, after[loan_id], strict=True):
            unpaid = unpaid_after[(loan_id, old.seq)]
            expected = 0
            if (
                open_
                and rules.late_fee_due(close_date, old.due_date, policy.grace_days)
                and (unpaid > tolerance)
            ):
                expected = rules.late_fee_minor(policy, unpaid)
            assert new.late_fees_minor == expected, (loan_id, old.seq)

    # The stored installments are what a replay over the fees charged gives: a fee is paid
    # first by a payment received after it.
    on_close_date, replayed = await positions_on(close_date, after)
    for loan_id, rows in after.items():
        stored = [(r.paid_fees_minor, r.paid_interest_minor, r.paid_principal_minor) for r in rows]
        assert stored == [
            (i.paid_fees_minor, i.paid_interest_minor, i.paid_principal_minor)
            for i in replayed[loan_id].installments
        ], loan_id

    # The per-loan path, on the closed loans as of the date closed, finds nothing to change.
    # (A loan disbursed after that date is left alone by the close, as it was booked.)
    async with session_scope() as session:
        for loan in list(await session.scalars(select(Loan))):
            if loan.disbursed_on > close_date:
                continue
            batch = (loan.days_past_due, loan.bucket, loan.status)
            await delinquency.refresh_loan(session, loan, on_close_date[loan.id], close_date)
            assert (loan.days_past_due, loan.bucket, loan.status) == batch, loan.id
        await session.rollback()
    # The risk engine's per-loan path (no filter) changes no flag and no score the batch left.
    async with session_scope() as session:
        scores = dict((await session.execute(select(Loan.id, Loan.risk_score))).all())
        for loan_id in scores:
            counts = await risk.evaluate_loans(session, close_date, loan_id=loan_id)
            assert counts["flags_raised"] == counts["flags_cleared"] == 0, (loan_id, counts)
            assert counts["flags_changed"] == 0, (loan_id, counts)
        rescored = dict((await session.execute(select(Loan.id, Loan.risk_score))).all())
        assert rescored == scores
        await session.rollback()
    await borrowers_agree(close_date)
