"""`loanwatch demo`: the synthetic portfolio keeps the loan book's invariants, agrees with the
allocation waterfall, and the close finds the mix it was made with."""

import os
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date
from itertools import product
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app import demo
from app.close import service as close_service
from app.close.models import CloseRun
from app.db import session_scope
from app.ids import new_id
from app.loans.models import Loan, LoanInstallment
from app.payments.allocation import InstallmentTerms, PaymentIn, replay
from app.payments.models import Payment, PaymentAllocation
from app.portfolio import service as portfolio
from app.portfolio.positions import Scope

AS_OF = date(2026, 6, 30)
LOANS = 300


async def violations(sql: str) -> list[tuple[object, ...]]:
    async with session_scope() as session:
        return [tuple(row) for row in await session.execute(text(sql))]


async def counted(sql: str) -> Counter[str]:
    async with session_scope() as session:
        return Counter({str(name): int(count) for name, count in await session.execute(text(sql))})


# Each query lists the rows that break one invariant; all must be empty.
INVARIANTS = {
    "one disbursement of the principal per loan": """
        SELECT l.id FROM loan l
        LEFT JOIN ledger_transaction t ON t.loan_id = l.id AND t.kind = 'disbursement'
        GROUP BY l.id, l.principal_minor
        HAVING count(t.id) <> 1 OR sum(t.amount_minor) <> l.principal_minor""",
    "payments - reversals == paid parts + credit balance": """
        WITH net AS (
            SELECT loan_id, sum(CASE kind WHEN 'payment' THEN amount_minor
                                          WHEN 'reversal' THEN -amount_minor ELSE 0 END) AS net
            FROM ledger_transaction GROUP BY loan_id),
        repaid AS (
            SELECT loan_id, sum(paid_principal_minor + paid_interest_minor + paid_fees_minor)
                   AS repaid
            FROM loan_installment GROUP BY loan_id)
        SELECT l.id FROM loan l JOIN net ON net.loan_id = l.id
        JOIN repaid ON repaid.loan_id = l.id
        WHERE net.net <> repaid.repaid + l.credit_balance_minor OR l.credit_balance_minor <> 0""",
    "principal outstanding == unpaid principal": """
        SELECT l.id FROM loan l JOIN loan_installment i ON i.loan_id = l.id
        GROUP BY l.id, l.principal_outstanding_minor, l.principal_minor
        HAVING l.principal_outstanding_minor <> sum(i.principal_minor - i.paid_principal_minor)
            OR sum(i.principal_minor) <> l.principal_minor""",
    "allocations == paid parts of each installment": """
        SELECT i.loan_id, i.seq FROM loan_installment i
        LEFT JOIN payment_allocation a ON a.loan_id = i.loan_id AND a.installment_seq = i.seq
        GROUP BY i.loan_id, i.seq, i.paid_fees_minor, i.paid_interest_minor,
                 i.paid_principal_minor
        HAVING coalesce(sum(a.fees_minor), 0) <> i.paid_fees_minor
            OR coalesce(sum(a.interest_minor), 0) <> i.paid_interest_minor
            OR coalesce(sum(a.principal_minor), 0) <> i.paid_principal_minor""",
    "allocations only of applied payments, on their own loan, adding up": """
        SELECT p.id FROM payment p JOIN payment_allocation a ON a.payment_id = p.id
        GROUP BY p.id, p.status, p.amount_minor, p.loan_id
        HAVING p.status <> 'applied' OR bool_or(a.loan_id <> p.loan_id)
            OR sum(a.fees_minor + a.interest_minor + a.principal_minor) <> p.amount_minor""",
    "one payment row per payment, and a reversal row per reversed one": """
        SELECT p.id FROM payment p
        LEFT JOIN ledger_transaction t ON t.payment_id = p.id
        GROUP BY p.id, p.status, p.amount_minor, p.received_on
        HAVING count(*) FILTER (WHERE t.kind = 'payment' AND t.amount_minor = p.amount_minor
                                AND t.effective_on = p.received_on) <> 1
            OR count(*) FILTER (WHERE t.kind = 'reversal' AND t.amount_minor = p.amount_minor)
               <> (CASE p.status WHEN 'reversed' THEN 1 ELSE 0 END)""",
    "installment status agrees with its paid parts": """
        SELECT loan_id, seq FROM loan_installment
        WHERE status <> CASE
            WHEN paid_on IS NOT NULL THEN 'paid'
            WHEN paid_principal_minor + paid_interest_minor + paid_fees_minor > 0
                THEN 'partially_paid'
            ELSE 'pending' END
           OR (paid_on IS NOT NULL) <> (principal_minor + interest_minor + fees_minor
               = paid_principal_minor + paid_interest_minor + paid_fees_minor
                 + interest_waived_minor + fees_waived_minor)""",
    "paid off exactly when every installment is paid, on the last paid_on": """
        SELECT l.id FROM loan l JOIN loan_installment i ON i.loan_id = l.id
        GROUP BY l.id, l.status, l.paid_off_on
        HAVING (l.status = 'paid_off') <> bool_and(i.paid_on IS NOT NULL)
            OR l.status NOT IN ('active', 'paid_off')
            OR l.paid_off_on IS DISTINCT FROM
               (CASE WHEN l.status = 'paid_off' THEN max(i.paid_on) END)""",
    "nothing received after the as-of date or before disbursement": f"""
        SELECT p.id FROM payment p JOIN loan l ON l.id = p.loan_id
        WHERE p.received_on > DATE '{AS_OF}' OR p.received_on <= l.disbursed_on
           OR l.disbursed_on >= DATE '{AS_OF}'""",
    "delinquency left to the close": """
        SELECT id FROM loan WHERE days_past_due <> 0 OR bucket <> 'current'
           OR delinquency_as_of IS NOT NULL""",
}


async def test_demo_portfolio_keeps_the_invariants_and_the_close_sees_the_mix() -> None:
    # Foreign keys checked row by row here (the fast path skips them as a superuser).
    summary = await demo.generate(LOANS, as_of=AS_OF, seed=7, batch_loans=100,
                                  check_foreign_keys=True)  # fmt: skip
    assert summary.loans == LOANS
    assert summary.rows["borrower"] == LOANS // demo.LOANS_PER_BORROWER
    outcomes = summary.outcomes
    assert outcomes[demo.CURRENT] > LOANS // 2
    for outcome in (demo.DPD_1_30, demo.DPD_31_90, demo.DPD_90_PLUS, demo.PAID_OFF_EARLY,
                    demo.PAID_OFF_AT_TERM, demo.PARTIAL, demo.BOUNCED):  # fmt: skip
        assert outcomes[outcome] > 0, outcome

    for name, sql in INVARIANTS.items():
        assert await violations(sql) == [], name
    assert await violations("SELECT count(*) FROM payment WHERE status = 'reversed'") != [(0,)]

    await assert_the_waterfall_agrees()
    # The dashboards see the book before any close (they saw no loan: a tester's).
    async with session_scope() as session:
        book = await portfolio.summary(session, Scope(currency=demo.CURRENCY))
    open_loans = await counted("SELECT 'open', count(*) FROM loan WHERE status = 'active'")
    assert (book.loans.count, book.by_status["paid_off"].count) == (
        open_loans["open"], outcomes[demo.PAID_OFF_EARLY] + outcomes[demo.PAID_OFF_AT_TERM],
    )  # fmt: skip

    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=AS_OF)
    await close_service.run_dates_in_process(dates)
    async with session_scope() as session:
        run = await session.get(CloseRun, AS_OF)
        assert run is not None
        assert run.status == "succeeded", run.error
        assert run.counts["late_fees_assessed"] > 0
    buckets = await counted(
        "SELECT bucket, count(*) FROM loan WHERE status <> 'paid_off' GROUP BY bucket"
    )
    statuses = await counted("SELECT status, count(*) FROM loan GROUP BY status")
    assert set(buckets) == {"current", "1-30", "31-60", "61-90", "90+"}, buckets
    assert buckets["current"] > sum(buckets.values()) // 2
    assert {"active", "delinquent", "defaulted", "paid_off"} <= set(statuses), statuses
    assert run.counts["delinquency_changes"] == sum(buckets.values()) - buckets["current"]
    # The ledger still balances with the fees charged.
    assert await violations(INVARIANTS["payments - reversals == paid parts + credit balance"]) == []


async def assert_the_waterfall_agrees() -> None:
    """Replaying each loan's applied payments through payments/allocation.py gives back the
    stored installments, allocations and balances."""
    async with session_scope() as session:
        loans = {loan.id: loan for loan in await session.scalars(select(Loan))}
        installments: dict[str, list[LoanInstallment]] = defaultdict(list)
        for i in await session.scalars(
            select(LoanInstallment).order_by(LoanInstallment.loan_id, LoanInstallment.seq)
        ):
            installments[i.loan_id].append(i)
        payments: dict[str, list[PaymentIn]] = defaultdict(list)
        for p in await session.scalars(
            select(Payment).where(Payment.status == "applied")
            .order_by(Payment.received_on, Payment.id)
        ):  # fmt: skip
            payments[p.loan_id].append(PaymentIn(p.id, p.amount_minor, p.received_on))
        allocations: dict[str, set[tuple[str, int, int, int, int]]] = defaultdict(set)
        for a in await session.scalars(select(PaymentAllocation)):
            allocations[a.loan_id].add((a.payment_id, a.installment_seq, a.fees_minor,
                                        a.interest_minor, a.principal_minor))  # fmt: skip
    assert len(loans) == LOANS
    for loan_id, loan in loans.items():
        rows = installments[loan_id]
        position = replay(
            [InstallmentTerms(i.seq, i.due_date, i.principal_minor, i.interest_minor,
                              i.fees_minor) for i in rows],
            payments[loan_id],
        )  # fmt: skip
        stored = [
            (
                i.paid_fees_minor,
                i.paid_interest_minor,
                i.paid_principal_minor,
                i.interest_waived_minor,
                i.fees_waived_minor,
                i.paid_on,
            )
            for i in rows
        ]
        # No fee waiver in the demo: the rows' waived fees are the late fees withdrawn.
        replayed = [(i.paid_fees_minor, i.paid_interest_minor, i.paid_principal_minor,
                     i.interest_waived_minor, i.late_fees_withdrawn_minor,
                     i.paid_on)
                    for i in position.installments]  # fmt: skip
        assert stored == replayed, loan_id
        assert allocations[loan_id] == {
            (a.payment_id, a.installment_seq, a.fees_minor, a.interest_minor, a.principal_minor)
            for a in position.allocations
        }, loan_id
        assert position.credit_balance_minor == loan.credit_balance_minor == 0
        assert position.principal_outstanding_minor == loan.principal_outstanding_minor
        assert position.paid_off_on == loan.paid_off_on, loan_id


def test_ids_are_spelled_as_new_id_spells_them() -> None:
    sample = new_id("loan")
    value = 0
    for digit in sample.removeprefix("loan_"):
        value = value * 32 + "0123456789abcdefghjkmnpqrstvwxyz".index(digit)
    assert demo.encode_id("loan", value) == sample
    ids = demo.Ids(nonce=12345)
    made = [ids.make("pay", 1_700_000_000_000) for _ in range(1000)]
    assert made == sorted(made)
    assert len(set(made)) == 1000
    assert all(len(i) == len(sample) - 1 for i in made)


def test_the_same_seed_makes_the_same_loans() -> None:
    def amounts(seed: int) -> list[tuple[object, ...]]:
        plan = demo.PortfolioPlan(loans=90, as_of=AS_OF, seed=seed, merchant_id="mer_x")
        batch = plan.batch(0, 90)
        return [row[2:] for row in batch.installments]

    assert amounts(1) == amounts(1)
    assert amounts(1) != amounts(2)


def test_demo_on_the_embedded_default(tmp_path: Path) -> None:
    """`loanwatch demo` with no configuration: a SQLite file in the working folder, which the
    close then runs over."""
    loanwatch = str(Path(sys.executable).with_name("loanwatch"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOANWATCH_")}
    result = subprocess.run(
        [loanwatch, "demo", "--loans", "300", "--as-of", str(AS_OF)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "generated 300 loans" in result.stdout, result.stdout + result.stderr
    assert (tmp_path / "loanwatch.db").exists()
    closed = subprocess.run([loanwatch, "close", "--as-of", str(AS_OF)], cwd=tmp_path, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert closed.returncode == 0, closed.stdout + closed.stderr
    assert '"status": "succeeded"' in closed.stdout


def test_the_commands_take_dates_as_the_api_does(tmp_path: Path) -> None:
    """YYYY-MM-DD exactly: `close --as-of 2018-1-10` closed that date, which the API refuses
    (a tester's)."""
    loanwatch = str(Path(sys.executable).with_name("loanwatch"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOANWATCH_")}
    for command in ("close", "demo"):
        for as_of in ("2018-1-10", "20180110", "2018-02-30"):
            refused = subprocess.run([loanwatch, command, "--as-of", as_of], cwd=tmp_path,
                                     env=env, capture_output=True, text=True)  # fmt: skip
            assert refused.returncode == 2, (command, as_of, refused.stdout)
            assert "Invalid value for '--as-of'" in refused.stderr
    # A date no close can be for is refused before the database is made (it left a new,
    # migrated file behind: a tester's).
    for command, as_of in product(("close", "demo"), ("2999-01-01", "2000-01-01")):
        refused = subprocess.run([loanwatch, command, "--as-of", as_of], cwd=tmp_path, env=env,
                                 capture_output=True, text=True)  # fmt: skip
        assert refused.returncode == 2, (command, as_of, refused.stdout)
        assert refused.stderr.startswith("error: as_of"), refused.stderr
    assert not (tmp_path / "loanwatch.db").exists()


async def test_demo_refuses_a_date_after_today() -> None:
    with pytest.raises(ValueError, match="after today"):
        await demo.generate(3, as_of=date(2999, 1, 1))
