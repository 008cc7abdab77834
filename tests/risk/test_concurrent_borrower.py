"""A borrower's loans are paid on at the same moment (a POS and a gateway, or two tills):
each payment re-grades the borrower in its own transaction, and neither may fail for it."""

import asyncio
from datetime import date

import httpx
from sqlalchemy import update

from app import clock
from app.borrowers.models import Borrower
from app.db import session_scope
from app.delinquency import service as delinquency
from app.loans.models import Loan, LoanStatus
from app.risk import grades
from tests.close.test_close import close, late_world
from tests.factories import world


async def test_payments_at_once_on_a_borrowers_loans_in_arrears_all_count(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client, grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})
    borrower = (await w.borrower(monthly_income="50000.00"))["id"]
    loans = [
        await w.loan(borrower, principal="1200.00", term=3, disbursed_on="2026-01-10")
        for _ in range(4)
    ]
    # The first close raises each loan's flags on its date: a payment that date re-grades
    # the borrower (whose flags moved), and updates its loan twice (the foreign key to the
    # borrower is checked again, a key-share lock on the borrower's row).
    await close(w, "2026-02-15")
    for _ in range(3):  # each round leaves every loan past due
        answers = await asyncio.gather(
            *(w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "50.00"}) for loan in loans)
        )
        assert [a.status_code for a in answers] == [201] * len(loans), [a.text for a in answers]
    for loan in loans:
        assert (await w.get(f"/v1/loans/{loan['id']}"))["days_past_due"] > 0
        ledger = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
        assert [t["amount"] for t in ledger if t["kind"] == "payment"] == ["50.00"] * 3


async def test_a_borrower_graded_beside_another_payoff_reads_it_once_committed(
    client: httpx.AsyncClient,
) -> None:
    """Two payoffs of one borrower's two loans at once: each transaction read the other loan
    still open, in a snapshot taken before the other committed, and the borrower stayed at D
    with nothing owed (a tester's, on PostgreSQL). The second waits for the borrower's lock,
    then reads the loans."""
    w = await world(client)
    borrower_id = (await w.borrower())["id"]
    first, second = [(await w.loan(borrower_id))["id"] for _ in range(2)]
    async with session_scope() as session:  # both in arrears, graded D
        await session.execute(update(Loan).where(Loan.borrower_id == borrower_id)
                              .values(risk_grade="D"))  # fmt: skip
        await session.execute(update(Borrower).where(Borrower.id == borrower_id)
                              .values(risk_grade="D"))  # fmt: skip
    today = clock.today()

    async def pay_off(loan_id: str) -> None:
        async with session_scope() as session:
            await session.execute(update(Loan).where(Loan.id == loan_id)
                                  .values(status=LoanStatus.PAID_OFF, risk_grade="A"))  # fmt: skip
            await grades.grade_borrowers(session, today, borrower_id=borrower_id)
            await asyncio.sleep(0.5)  # still uncommitted while the other grades

    await asyncio.gather(pay_off(first), pay_off(second))
    assert (await w.get(f"/v1/borrowers/{borrower_id}", w.admin))["risk_grade"] == "A"


async def test_the_close_leaves_a_loan_paid_off_while_it_waited_for_it(
    client: httpx.AsyncClient,
) -> None:
    """A loan a reversal reopened after the chunk's lock, paid off again while the close's
    update waited for its row: PostgreSQL checked the row again, not what the statement had
    read, and the paid-off loan took the bucket of its arrears (a tester's)."""
    w, loan = await late_world(client)
    await close(w, "2026-02-15")  # 5 days past due

    async def pay_off() -> None:
        async with session_scope() as session:
            await session.execute(update(Loan).where(Loan.id == loan["id"]).values(
                status=LoanStatus.PAID_OFF, bucket="current", days_past_due=0))  # fmt: skip
            await asyncio.sleep(0.5)  # the close's update reads the loan open, then waits

    async def close_delinquency() -> None:
        await asyncio.sleep(0.1)
        async with session_scope() as session:
            await delinquency.recompute_delinquency(session, date(2026, 2, 16), None, None)

    await asyncio.gather(pay_off(), close_delinquency())
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["status"], got["bucket"], got["days_past_due"]) == ("paid_off", "current", 0)


async def test_the_grades_step_reads_again_a_borrower_it_waited_for(
    client: httpx.AsyncClient,
) -> None:
    """The close's grades step locks the borrowers that may change; one whose lock a payment
    held was checked again by PostgreSQL with the loans read before the wait, and graded
    back to D over the payoff that had just graded it A."""
    w = await world(client)
    borrower_id = (await w.borrower())["id"]
    cured, paid = [(await w.loan(borrower_id))["id"] for _ in range(2)]
    async with session_scope() as session:  # a cut limit: the step looks at the borrower
        await session.execute(update(Loan).where(Loan.id == cured).values(risk_grade="A"))
        await session.execute(update(Loan).where(Loan.id == paid).values(risk_grade="D"))
        await session.execute(update(Borrower).where(Borrower.id == borrower_id)
                              .values(risk_grade="D", limit_before_cut_minor=3_000_00))  # fmt: skip
    today = clock.today()

    async def pay_off() -> None:
        async with session_scope() as session:
            await session.execute(update(Loan).where(Loan.id == paid)
                                  .values(status=LoanStatus.PAID_OFF, risk_grade="A"))  # fmt: skip
            await grades.grade_borrowers(session, today, borrower_id=borrower_id)
            await asyncio.sleep(0.5)  # the step reads the loan open, then waits

    async def grades_step() -> None:
        await asyncio.sleep(0.1)
        async with session_scope() as session:
            await grades.grade_borrowers(session, today, None, None)

    await asyncio.gather(pay_off(), grades_step())
    assert (await w.get(f"/v1/borrowers/{borrower_id}", w.admin))["risk_grade"] == "A"
