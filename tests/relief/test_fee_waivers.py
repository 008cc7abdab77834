"""Fee waivers through the API: asked, approved, applied to the fees due oldest first, kept
through later replays (payments, reversals, back-dated payments), and refused when there is
nothing to waive."""

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.ledger.models import LedgerTransaction
from app.relief.models import Restructure
from tests.factories import World, world
from tests.relief.books import LATE_FEE, close, late_loan


async def setup(client: httpx.AsyncClient) -> tuple[World, str]:
    return await late_loan(client, late_fee=LATE_FEE)


async def waive(w: World, loan_id: str, **fields: Any) -> dict[str, Any]:
    body = {"kind": "fee_waiver", "reason": "first late payment, goodwill", **fields}
    made = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    path = f"/v1/restructures/{made['id']}/approve"
    return dict((await w.post(path, {}, w.admin, 200)).json())


async def balances(w: World, loan_id: str) -> dict[str, str]:
    return dict((await w.get(f"/v1/loans/{loan_id}"))["balances"])


async def first_installment(w: World, loan_id: str) -> dict[str, Any]:
    return dict((await w.get(f"/v1/loans/{loan_id}/schedule"))["installments"][0])


async def waivers(w: World, loan_id: str) -> list[tuple[int, str]]:
    page = await w.get(f"/v1/loans/{loan_id}/transactions?limit=200")
    return [(t["installment_seq"], t["amount"]) for t in page["items"] if t["kind"] == "fee_waiver"]


async def stored() -> tuple[int, int]:
    async with session_scope() as session:
        restructures = await session.scalar(select(func.count()).select_from(Restructure))
        ledger = await session.scalar(select(func.count()).select_from(LedgerTransaction))
        return int(restructures or 0), int(ledger or 0)


async def test_every_fee_due_is_waived(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    assert (await balances(w, loan_id))["fees_outstanding"] == "25.00"
    body = {"kind": "fee_waiver", "reason": "goodwill"}
    pending = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    assert (pending["status"], pending["plan"], pending["waiver"]) == (
        "pending", None, {"requested": None, "waived": None},
    )  # fmt: skip
    assert (await balances(w, loan_id))["fees_outstanding"] == "25.00"  # asked, not yet given
    approved = (await w.post(f"/v1/restructures/{pending['id']}/approve", {}, w.admin)).json()
    assert (approved["status"], approved["waiver"]) == (
        "approved", {"requested": None, "waived": "25.00"},
    )  # fmt: skip
    after = await balances(w, loan_id)
    assert (after["fees_outstanding"], after["overdue_amount"]) == ("0.00", "412.00")
    inst = await first_installment(w, loan_id)
    assert (inst["fees"], inst["total"]) == ("0.00", "412.00")
    assert await waivers(w, loan_id) == [(1, "25.00")]
    (event,) = (await w.get("/v1/events?type=restructure.approved", w.admin))["items"]
    assert (event["data"]["kind"], event["data"]["waived"]) == ("fee_waiver", "25.00")


async def test_a_capped_waiver_and_the_waterfall_after_it(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    approved = await waive(w, loan_id, amount="10.00")
    assert approved["waiver"] == {"requested": "10.00", "waived": "10.00"}
    assert (await balances(w, loan_id))["fees_outstanding"] == "15.00"
    paid = await w.pay(loan_id, "427.00", "2026-02-16")  # 15.00 of fees, then 412.00
    assert paid["allocation"] == [
        {"installment_seq": 1, "fees": "15.00", "interest": "12.00", "principal": "400.00"}
    ]
    assert (await first_installment(w, loan_id))["status"] == "paid"


async def test_the_waiver_survives_reversals_and_back_dated_payments(
    client: httpx.AsyncClient,
) -> None:
    w, loan_id = await setup(client)
    await waive(w, loan_id)
    paid = await w.pay(loan_id, "412.00", "2026-02-16")
    assert paid["allocation"][0]["fees"] == "0.00"  # the fee was forgiven, not paid
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    assert (await balances(w, loan_id))["fees_outstanding"] == "0.00"
    # A payment dated before the waiver still meets no fee: forgiven as if never charged.
    early = await w.pay(loan_id, "412.00", "2026-02-14")
    assert early["allocation"] == [
        {"installment_seq": 1, "fees": "0.00", "interest": "12.00", "principal": "400.00"}
    ]
    assert (await balances(w, loan_id))["fees_outstanding"] == "0.00"
    await close(w, "2026-02-20")  # no fee charged again on an installment already charged
    assert (await balances(w, loan_id))["fees_outstanding"] == "0.00"


async def test_a_fee_already_paid_is_not_waived(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await w.pay(loan_id, "10.00", "2026-02-15")  # pays 10.00 of the fee
    approved = await waive(w, loan_id)
    assert approved["waiver"]["waived"] == "15.00"
    assert await waivers(w, loan_id) == [(1, "15.00")]
    assert (await balances(w, loan_id))["fees_outstanding"] == "0.00"


async def test_nothing_to_waive(client: httpx.AsyncClient) -> None:
    w = await world(client, late_fee={"kind": "fixed", "amount": "25.00"})
    loan_id = str((await w.loan())["id"])
    before = await stored()
    refused = await w.post(f"/v1/loans/{loan_id}/restructures",
                           {"kind": "fee_waiver", "reason": "r"})  # fmt: skip
    assert (refused.status_code, refused.json()["code"]) == (409, "no_fees_to_waive")
    # A malformed amount is told so first, as on a loan with fees.
    for amount in ("1.0", "0.00"):
        refused = await w.post(f"/v1/loans/{loan_id}/restructures",
                               {"kind": "fee_waiver", "reason": "r", "amount": amount})  # fmt: skip
        assert refused.status_code == 422, amount
        assert [e["field"] for e in refused.json()["errors"]] == ["amount"], amount
    assert await stored() == before


async def test_fees_paid_before_approval_leave_nothing(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    body = {"kind": "fee_waiver", "reason": "r"}
    pending = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    await w.pay(loan_id, "25.00", "2026-02-15")
    before = await stored()
    refused = await w.post(f"/v1/restructures/{pending['id']}/approve", {}, w.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "no_fees_to_waive")
    assert await stored() == before
    assert (await w.get(f"/v1/restructures/{pending['id']}"))["status"] == "pending"


BAD_WAIVERS: list[tuple[str, dict[str, Any], str]] = [
    ("more than the fees due", {"amount": "25.01"}, "amount"),
    ("zero", {"amount": "0.00"}, "amount"),
    ("a JSON number", {"amount": 10}, "amount"),
    ("installments on a waiver", {"installments": [{"due_on": "2026-03-01",
                                                    "amount": "1.00"}]}, "installments"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "override", "field"), BAD_WAIVERS,
                         ids=[c[0] for c in BAD_WAIVERS])  # fmt: skip
async def test_malformed_waivers_are_refused(
    client: httpx.AsyncClient, case: str, override: dict[str, Any], field: str
) -> None:
    w, loan_id = await setup(client)
    before = await stored()
    body = {"kind": "fee_waiver", "reason": "r", **override}
    response = await w.post(f"/v1/loans/{loan_id}/restructures", body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    if case == "more than the fees due":
        assert "25.00" in response.json()["detail"]
    assert await stored() == before


async def test_a_waiver_still_counts_when_a_back_dated_payment_lowers_the_fee(
    client: httpx.AsyncClient,
) -> None:
    """5 % of 412.00 unpaid is a fee of 20.60, 10.00 of it waived; then 400.00 paid on the due
    date comes in: the fee should have been 5 % of 12.00, 0.60, and the waiver takes that off
    too. It left 0.60 owed, as if no waiver had been granted, while the waiver still said
    10.00 (a tester's)."""
    w, loan_id = await late_loan(
        client, late_fee={"kind": "percent", "percent": "0.05", "cap_per_installment": "100.00"}
    )
    assert (await balances(w, loan_id))["fees_outstanding"] == "20.60"
    assert (await waive(w, loan_id, amount="10.00"))["waiver"]["waived"] == "10.00"
    await w.pay(loan_id, "400.00", "2026-02-10")
    after = await balances(w, loan_id)
    assert (after["fees_outstanding"], after["overdue_amount"]) == ("0.00", "12.00")
    page = await w.get(f"/v1/loans/{loan_id}/transactions?limit=200")
    fees = {t["kind"]: t["amount"] for t in page["items"] if t["installment_seq"] == 1}
    assert (fees["late_fee"], fees["fee_waiver"], fees["late_fee_forgiven"]) == (
        "20.60", "10.00", "10.60",
    )  # fmt: skip
