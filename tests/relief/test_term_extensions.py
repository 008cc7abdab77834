"""Term extensions through the API: the installments not yet due are re-amortised over more
months, the overdue ones stay as they were, nothing owed changes, and the payments follow."""

from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.factories import world
from tests.relief.books import LATE_FEE, assert_refused, close, late_loan, stored


async def extend(w: Any, loan_id: str, months: int = 3) -> dict[str, Any]:
    body = {"kind": "term_extension", "reason": "lower installments", "months": months}
    made = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    return dict((await w.post(f"/v1/restructures/{made['id']}/approve", {}, w.admin, 200)).json())


async def schedule(w: Any, loan_id: str) -> list[tuple[int, str, str, str, str, str]]:
    rows = (await w.get(f"/v1/loans/{loan_id}/schedule"))["installments"]
    return [(i["seq"], i["due_date"], i["principal"], i["interest"], i["total"], i["status"])
            for i in rows]  # fmt: skip


async def test_the_installments_ahead_are_reamortised(client: httpx.AsyncClient) -> None:
    # 1200.00 over 3 months at 12 %, equal principal; on Feb 15 the first (412.00, Feb 10) is
    # 5 days late and carries a 25.00 late fee; 800.00 of principal is still ahead.
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    before = await w.get(f"/v1/loans/{loan_id}")
    body = {"kind": "term_extension", "reason": "lower installments", "months": 3}
    pending = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    assert pending["extension"] == {"months": 3, "term_was": None, "term": None,
                                    "installment_was": None, "installment": None}  # fmt: skip
    assert await schedule(w, loan_id) == [
        (1, "2026-02-10", "400.00", "12.00", "437.00", "overdue"),
        (2, "2026-03-10", "400.00", "8.00", "408.00", "pending"),
        (3, "2026-04-10", "400.00", "4.00", "404.00", "pending"),
    ]  # nothing changes before approval
    approved = (await w.post(f"/v1/restructures/{pending['id']}/approve", {}, w.admin)).json()
    assert approved["extension"] == {
        "months": 3, "term_was": 3, "term": 6, "installment_was": "408.00", "installment": "168.00",
    }  # fmt: skip
    # 800.00 over five months: 160.00 of principal each, 1 % a month on what is left.
    assert await schedule(w, loan_id) == [
        (1, "2026-02-10", "400.00", "12.00", "437.00", "overdue"),
        (2, "2026-03-10", "160.00", "8.00", "168.00", "pending"),
        (3, "2026-04-10", "160.00", "6.40", "166.40", "pending"),
        (4, "2026-05-10", "160.00", "4.80", "164.80", "pending"),
        (5, "2026-06-10", "160.00", "3.20", "163.20", "pending"),
        (6, "2026-07-10", "160.00", "1.60", "161.60", "pending"),
    ]
    after = await w.get(f"/v1/loans/{loan_id}")
    assert after["term"] == 6
    # The principal and the arrears do not move. (Interest and payoff are as of today, in
    # this test months after the last due date: the longer loan has accrued more interest.)
    owed = ("principal_outstanding", "fees_outstanding", "overdue_amount")
    assert [after["balances"][k] for k in owed] == [before["balances"][k] for k in owed]
    assert after["balances"]["interest_outstanding"] == "36.00"  # 12.00 + 8.00 + ... + 1.60
    # Still late, so still delinquent; an extended loan shows `restructured` once current.
    assert (after["days_past_due"], after["status"]) == (before["days_past_due"], "delinquent")
    assert after["restructured_on"] == "2026-02-15"
    (event,) = (await w.get("/v1/events?type=restructure.approved", w.admin))["items"]
    assert {k: event["data"][k] for k in ("kind", "months", "term_was", "term", "installment_was",
                                          "installment")} == {
        "kind": "term_extension", "months": 3, "term_was": 3, "term": 6,
        "installment_was": "408.00", "installment": "168.00",
    }  # fmt: skip


async def test_payments_follow_the_new_schedule(client: httpx.AsyncClient) -> None:
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    prepaid = await w.pay(loan_id, "500.00", "2026-02-15")  # 437.00 due, 63.00 ahead
    await extend(w, loan_id)
    rows = await schedule(w, loan_id)
    assert [r[5] for r in rows] == ["paid", "partially_paid", *["pending"] * 4]
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert loan["balances"]["principal_outstanding"] == "745.00"  # 800.00 - 55.00 (8.00 interest)
    # Reversing the payment replays the loan on the schedule as it now stands.
    await w.post(f"/v1/payments/{prepaid['id']}/reverse", {"reason": "nsf"}, expect=200)
    rows = await schedule(w, loan_id)
    assert [r[5] for r in rows] == ["overdue", *["pending"] * 5]
    # The 800.00 ahead was re-amortised (160.00 a month, 55.00 of March's paid ahead): March
    # asks its 168.00 whole again now that the payment bounced.
    assert [r[4] for r in rows][1:3] == ["168.00", "166.40"]
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert loan["balances"]["principal_outstanding"] == "1200.00"
    # The payoff (as of today, like the balances) pays the extended loan off.
    payoff = await w.pay(loan_id, loan["balances"]["payoff_amount"])
    assert (await w.get(f"/v1/loans/{loan_id}"))["status"] == "paid_off"
    # Reversed, the loan is open again: restructured if current, here late.
    await w.post(f"/v1/payments/{payoff['id']}/reverse", {"reason": "nsf"}, expect=200)
    assert (await w.get(f"/v1/loans/{loan_id}"))["status"] == "delinquent"


async def test_principal_paid_ahead_bears_no_interest_over_the_longer_term(
    client: httpx.AsyncClient,
) -> None:
    """Money paid ahead paid March's installment whole and 192.00 of April's principal: March
    stays paid, April keeps the 192.00 as its principal, and the 208.00 still owed is spread
    from May, bearing interest only on itself (black-box testers': a loan prepaid to a sixth
    was charged interest on all of it over the longer term; a loan paid through its next date
    owed on it after; a bounced prepayment asked for all of it on one date)."""
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    await w.pay(loan_id, "437.00", "2026-02-15")  # the arrears
    ahead = await w.pay(loan_id, "600.00", "2026-02-15")  # the 408.00 of March, 192.00 of April
    before = (await w.get(f"/v1/loans/{loan_id}"))["balances"]
    assert before["principal_outstanding"] == "208.00"
    approved = await extend(w, loan_id)
    # April asked 404.00 - 192.00; now its interest alone. Spread from April, its principal
    # would have been 100.00, less than the 192.00 paid on it.
    assert approved["extension"] == {
        "months": 3, "term_was": 3, "term": 6, "installment_was": "212.00", "installment": "4.00",
    }  # fmt: skip
    # 208.00 over three months from May, 69.33 each (the last 69.34) at 1 % a month on what
    # is left: every date asks less than before.
    assert await schedule(w, loan_id) == [
        (1, "2026-02-10", "400.00", "12.00", "437.00", "paid"),
        (2, "2026-03-10", "400.00", "8.00", "408.00", "paid"),
        (3, "2026-04-10", "192.00", "4.00", "196.00", "partially_paid"),
        (4, "2026-05-10", "69.33", "2.08", "71.41", "pending"),
        (5, "2026-06-10", "69.33", "1.39", "70.72", "pending"),
        (6, "2026-07-10", "69.34", "0.69", "70.03", "pending"),
    ]
    after = (await w.get(f"/v1/loans/{loan_id}"))["balances"]
    assert after["principal_outstanding"] == "208.00"
    assert after["interest_outstanding"] == "8.16"  # 4.00 + 2.08 + 1.39 + 0.69

    # Bounced, the prepayment is owed where it was paid: March whole, April's 192.00.
    await w.post(f"/v1/payments/{ahead['id']}/reverse", {"reason": "nsf"}, expect=200)
    assert [r[4] for r in await schedule(w, loan_id)][1:4] == ["408.00", "196.00", "71.41"]


async def test_a_bounced_prepayment_is_spread_by_extending_again(
    client: httpx.AsyncClient,
) -> None:
    """After a bounced prepayment the installments it had paid ask for it again (a
    re-verifier's); another extension spreads what is owed ahead, as always."""
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    await w.pay(loan_id, "437.00", "2026-02-15")
    ahead = await w.pay(loan_id, "600.00", "2026-02-15")
    await extend(w, loan_id)
    await w.post(f"/v1/payments/{ahead['id']}/reverse", {"reason": "nsf"}, expect=200)
    again = await extend(w, loan_id, months=1)
    # 800.00 of principal from March over six months: 133.33 and March's 8.00 of interest.
    assert (again["extension"]["installment_was"], again["extension"]["installment"]) == (
        "408.00", "141.33",
    )  # fmt: skip
    rows = await schedule(w, loan_id)
    assert len(rows) == 7
    assert sum(Decimal(r[2]) for r in rows[1:]) == Decimal("800.00")  # all of it, spread


async def test_an_extended_loan_is_restructured_while_current(client: httpx.AsyncClient) -> None:
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    await extend(w, loan_id, months=2)
    cured = await w.pay(loan_id, "437.00", "2026-02-15")  # the arrears: current at once
    assert cured["loan"]["status"] == "restructured"
    listed = (await w.get("/v1/loans?status=restructured", w.admin))["items"]
    assert [loan["id"] for loan in listed] == [loan_id]
    await close(w, "2026-03-20")  # the close's set-based step: late again, so delinquent
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert (loan["status"], loan["days_past_due"]) == ("delinquent", 10)
    second = (await w.get(f"/v1/loans/{loan_id}/schedule"))["installments"][1]
    await w.pay(loan_id, second["total"], "2026-03-21")
    await close(w, "2026-03-22")
    assert (await w.get(f"/v1/loans/{loan_id}"))["status"] == "restructured"


async def test_a_reminded_installment_is_reminded_again_of_its_new_amount(
    client: httpx.AsyncClient,
) -> None:
    """The reminder before the extension asked what the date no longer asks."""
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    await w.pay(loan_id, "437.00", "2026-02-15")
    await close(w, "2026-03-07")  # three days before Mar 10: reminded of 408.00
    await extend(w, loan_id, months=3)
    await close(w, "2026-03-08")
    reminders = (await w.get("/v1/events?type=installment.due_soon", w.admin))["items"]
    told = [(e["data"]["due_date"], e["data"]["amount_due"], e["data"]["days_until_due"])
            for e in reminders if e["data"]["installment_seq"] == 2]  # fmt: skip
    assert told == [("2026-03-10", "408.00", 3), ("2026-03-10", "168.00", 2)]
    await close(w, "2026-03-09")  # once per amount
    reminders = (await w.get("/v1/events?type=installment.due_soon", w.admin))["items"]
    assert len([e for e in reminders if e["data"]["installment_seq"] == 2]) == 2


async def test_the_close_follows_the_new_dates(client: httpx.AsyncClient) -> None:
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    await w.pay(loan_id, "437.00", "2026-02-16")
    await extend(w, loan_id, months=1)
    second = (await schedule(w, loan_id))[1]
    assert (second[1], second[5]) == ("2026-03-10", "pending")
    await close(w, "2026-03-20")  # the new second installment is late like any other
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert loan["days_past_due"] == 10
    assert Decimal(loan["balances"]["overdue_amount"]) == Decimal(second[4]) + Decimal("25.00")


async def test_a_term_beyond_sixty_months_is_refused(client: httpx.AsyncClient) -> None:
    w, _ = await late_loan(client, late_fee=LATE_FEE, term_options=[3, 36])
    loan = await w.loan(principal="3600.00", term=36, disbursed_on="2026-02-01")
    restructures = f"/v1/loans/{loan['id']}/restructures"
    # Two requests that each fit, approved one after the other: the second would not.
    body = {"kind": "term_extension", "reason": "r", "months": 13}
    first, second = [(await w.post(restructures, body, expect=201)).json()["id"] for _ in range(2)]
    await w.post(f"/v1/restructures/{first}/approve", {}, w.admin, 200)
    refused = await w.post(f"/v1/restructures/{second}/approve", {}, w.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "term_too_long")
    assert (await w.get(f"/v1/loans/{loan['id']}"))["term"] == 49
    before = await stored()
    body["months"] = 12
    refused = await w.post(restructures, body)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"field": "months", "message": "the term would be 61 months, beyond 60"}
    ]
    assert await stored() == before


async def test_an_extension_too_small_for_the_multiple_is_refused(
    client: httpx.AsyncClient,
) -> None:
    # 1000.00 at 12.99 % over 12 months in multiples of 50.00: 100.00 ten times, 50.00, 14.35.
    w = await world(client, annual_interest_rate="0.1299", installment_multiple_of="50.00")
    await close(w, "2026-01-10")
    loan = await w.loan(principal="1000.00", term=12, disbursed_on="2026-01-10")
    await close(w, "2026-02-15")
    # What is left, about 910.00, over 35 months would be about 31.00 a month: 34 of at least
    # 50.00 repay it long before the 35th.
    body = {"kind": "term_extension", "reason": "r", "months": 24}
    made = (await w.post(f"/v1/loans/{loan['id']}/restructures", body, expect=201)).json()
    before = await stored()
    refused = await w.post(f"/v1/restructures/{made['id']}/approve", {}, w.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "extension_does_not_fit")
    assert await stored() == before
    assert (await w.get(f"/v1/loans/{loan['id']}"))["term"] == 12
    restructure = await w.get(f"/v1/restructures/{made['id']}", w.admin)
    assert restructure["status"] == "pending"
    # Over fewer months it fits: about 910.00 over 12 months is 79.00 or so a month.
    body["months"] = 1
    made = (await w.post(f"/v1/loans/{loan['id']}/restructures", body, expect=201)).json()
    await w.post(f"/v1/restructures/{made['id']}/approve", {}, w.admin, 200)
    rows = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
    totals = [Decimal(r["total"]) for r in rows[1:]]
    assert all(t % 50 == 0 for t in totals[:-1])
    assert totals[:-1] == sorted(totals[:-1], reverse=True)
    assert 0 < totals[-1] <= totals[-2]


async def test_an_extension_of_a_few_cents_is_refused(client: httpx.AsyncClient) -> None:
    """0.01 left, over three installments: two would ask 0.00, no promise to pay (a tester
    saw them `pending` for ever); refused as origination refuses them."""
    w, loan_id = await late_loan(client)
    await w.pay(loan_id, "1219.99", "2026-02-15")  # the payoff that day, 1220.00, less 0.01
    body = {"kind": "term_extension", "reason": "r", "months": 3}
    made = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    before = await stored()
    refused = await w.post(f"/v1/restructures/{made['id']}/approve", {}, w.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "extension_does_not_fit")
    assert "ask nothing" in refused.json()["detail"]
    assert await stored() == before
    assert (await w.get(f"/v1/restructures/{made['id']}", w.admin))["status"] == "pending"


async def test_an_extension_before_a_long_first_period_ends_keeps_its_interest(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client, annual_interest_rate="0.1299", term_options=[12])
    await close(w, "2026-01-01")
    loan = await w.loan(principal="12000.00", term=12, disbursed_on="2026-01-01",
                        first_due_date="2026-04-03")  # fmt: skip
    first = (await schedule(w, loan["id"]))[0]
    assert first[2:4] == ("697.11", "398.36")  # 92 days of interest
    await extend(w, loan["id"], months=6)
    rows = await schedule(w, loan["id"])
    assert len(rows) == 18
    # The same principal over the same first period owes the same interest; a month's would be
    # 129.90.
    assert rows[0][1:4] == ("2026-04-03", "355.27", "398.36")
    assert sum(Decimal(r[2]) for r in rows) == Decimal("12000.00")


async def test_relief_on_a_loan_booked_after_the_business_date_counts_from_its_disbursement(
    client: httpx.AsyncClient,
) -> None:
    """The closes are behind (business date Jan 10) and the loan is booked back-dated to
    Mar 1: its relief cannot be decided on a day before it existed."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3)  # fmt: skip
    await close(w, "2026-01-10")
    made = await w.loan(principal="1200.00", term=3, disbursed_on="2026-03-01")
    approved = await extend(w, made["id"], months=3)
    assert approved["decided_on"] == "2026-03-01"
    assert (await w.get(f"/v1/loans/{made['id']}"))["restructured_on"] == "2026-03-01"
    # 1200.00 over six months from the disbursement: 200.00 of principal each.
    assert [r[1:4] for r in await schedule(w, made["id"])] == [
        ("2026-04-01", "200.00", "12.00"), ("2026-05-01", "200.00", "10.00"),
        ("2026-06-01", "200.00", "8.00"), ("2026-07-01", "200.00", "6.00"),
        ("2026-08-01", "200.00", "4.00"), ("2026-09-01", "200.00", "2.00"),
    ]  # fmt: skip
    # A rejection too.
    other = await w.loan(principal="1200.00", term=3, disbursed_on="2026-03-01")
    body = {"kind": "term_extension", "reason": "r", "months": 2}
    asked = (await w.post(f"/v1/loans/{other['id']}/restructures", body, expect=201)).json()
    rejected = await w.post(f"/v1/restructures/{asked['id']}/reject", {}, w.admin, 200)
    assert rejected.json()["decided_on"] == "2026-03-01"


async def test_nothing_ahead_is_nothing_to_extend(client: httpx.AsyncClient) -> None:
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    await close(w, "2026-04-11")  # every installment is due
    before = await stored()
    body = {"kind": "term_extension", "reason": "r", "months": 2}
    refused = await w.post(f"/v1/loans/{loan_id}/restructures", body)
    assert (refused.status_code, refused.json()["code"]) == (409, "nothing_to_defer")
    assert await stored() == before


BAD_EXTENSIONS: list[tuple[dict[str, Any], str]] = [
    ({"months": None}, "months"),
    ({"months": 0}, "months"),
    ({"months": 25}, "months"),
    ({"months": 2.5}, "months"),
    ({"months": True}, "months"),
    ({"months": "6"}, "months"),
    ({"amount": "1.00"}, "amount"),
    ({"installments": [{"due_on": "2026-03-01", "amount": "1.00"}]}, "installments"),
    ({"reason": ""}, "reason"),
    ({"reason": "   "}, "reason"),  # relief is audited: blank gives no reason
]


@pytest.mark.parametrize(("override", "field"), BAD_EXTENSIONS)
async def test_malformed_extensions_are_refused(
    client: httpx.AsyncClient, override: dict[str, Any], field: str
) -> None:
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    body = {"kind": "term_extension", "reason": "r", "months": 1}
    await assert_refused(w, loan_id, body, override, field)


async def test_an_extension_cancels_the_open_promises_to_pay(client: httpx.AsyncClient) -> None:
    """The new schedule is the new agreement, as a plan is: a promise made under the old one is
    cancelled, keeping what it counted (docs/relief.md)."""
    w, loan_id = await late_loan(client, late_fee=LATE_FEE)
    promises = f"/v1/loans/{loan_id}/promises"
    made = (await w.post(promises, {"amount": "437.00", "due_on": "2026-02-20"}, expect=201)).json()
    await w.pay(loan_id, "100.00", "2026-02-15")
    await extend(w, loan_id)
    (promise,) = (await w.get(promises))["items"]
    assert (promise["id"], promise["status"], promise["paid"], promise["cancelled_on"]) == (
        made["id"], "cancelled", "100.00", "2026-02-15",
    )  # fmt: skip
    await w.post(promises, {"amount": "337.00", "due_on": "2026-02-20"}, expect=201)
