"""A borrower's loans are paid on at the same moment (a POS and a gateway, or two tills):
each payment re-grades the borrower in its own transaction, and neither may fail for it."""

import asyncio

import httpx

from tests.close.test_close import close
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
