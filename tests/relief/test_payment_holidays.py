"""Payment holidays through the API: the installments not yet due move, the overdue ones stay,
the payments follow the new dates, and nothing is charged or reminded on the old ones."""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app import clock
from tests.factories import World, world
from tests.relief.books import LATE_FEE, assert_refused, close, late_loan, stored


async def setup(client: httpx.AsyncClient) -> tuple[World, str]:
    return await late_loan(client, late_fee=LATE_FEE)


async def holiday(w: World, loan_id: str, months: int = 2) -> dict[str, Any]:
    body = {"kind": "payment_holiday", "reason": "hospital stay", "months": months}
    made = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    return dict((await w.post(f"/v1/restructures/{made['id']}/approve", {}, w.admin, 200)).json())


async def due_dates(w: World, loan_id: str) -> list[tuple[str, str]]:
    schedule = await w.get(f"/v1/loans/{loan_id}/schedule")
    return [(i["due_date"], i["status"]) for i in schedule["installments"]]


async def test_the_installments_ahead_move(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    body = {"kind": "payment_holiday", "reason": "hospital stay", "months": 2}
    pending = (await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json()
    assert pending["holiday"] == {"months": 2, "moved": None}
    assert (pending["plan"], pending["waiver"]) == (None, None)
    approved = (await w.post(f"/v1/restructures/{pending['id']}/approve", {}, w.admin)).json()
    assert approved["holiday"] == {"months": 2, "moved": [
        {"seq": 2, "due_date_was": "2026-03-10", "due_date": "2026-05-10"},
        {"seq": 3, "due_date_was": "2026-04-10", "due_date": "2026-06-10"},
    ]}  # fmt: skip
    assert await due_dates(w, loan_id) == [
        ("2026-02-10", "overdue"), ("2026-05-10", "pending"), ("2026-06-10", "pending"),
    ]  # fmt: skip
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert loan["days_past_due"] == 5  # what was overdue stays overdue
    assert loan["balances"]["overdue_amount"] == "437.00"
    (event,) = (await w.get("/v1/events?type=restructure.approved", w.admin))["items"]
    assert (event["data"]["kind"], event["data"]["months"]) == ("payment_holiday", 2)
    # No late fee and no missed installment on the old date; the new one counts as usual.
    await w.pay(loan_id, "437.00", "2026-02-16")
    await close(w, "2026-03-20")
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert (loan["days_past_due"], loan["balances"]["fees_outstanding"]) == (0, "0.00")
    await close(w, "2026-05-14")
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert (loan["days_past_due"], loan["balances"]["fees_outstanding"]) == (4, "25.00")


async def test_payments_follow_the_new_dates(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    prepaid = await w.pay(loan_id, "500.00", "2026-02-15")  # 437.00 due, 63.00 ahead
    assert prepaid["allocation"][-1]["installment_seq"] == 2
    await holiday(w, loan_id, months=1)
    assert await due_dates(w, loan_id) == [
        ("2026-02-10", "paid"), ("2026-04-10", "partially_paid"), ("2026-05-10", "pending"),
    ]  # fmt: skip
    await w.post(f"/v1/payments/{prepaid['id']}/reverse", {"reason": "nsf"}, expect=200)
    assert (await due_dates(w, loan_id))[1] == ("2026-04-10", "pending")  # the new date stays


async def test_installments_paid_in_full_ahead_stay(client: httpx.AsyncClient) -> None:
    """Yesterday closed; today the first installment falls due and the borrower pays all but
    1.00. The first two are paid whole (today's, and the current period's with its interest),
    the rest only in principal. Moved, the second's period would come later and its paid
    interest would no longer be owed: the holiday paid the loan off, the borrower 5.60 over,
    and nothing said so (a tester's)."""
    today = clock.today()
    w = await world(client, annual_interest_rate="0.1299", grace_days=3)
    await close(w, str(today - timedelta(days=1)))
    loan = await w.loan(principal="1200.00", term=6, disbursed_on=str(today - timedelta(days=30)),
                        first_due_date=str(today))  # fmt: skip
    payoff = Decimal((await w.get(f"/v1/loans/{loan['id']}"))["balances"]["payoff_amount"])
    await w.pay(loan["id"], str(payoff - 1))
    approved = await holiday(w, loan["id"], months=1)
    assert [m["seq"] for m in approved["holiday"]["moved"]] == [3, 4, 5, 6]
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["status"], got["balances"]["principal_outstanding"]) == ("active", "1.00")
    assert (got["balances"]["credit_balance"], got["balances"]["payoff_amount"]) == (
        "0.00", "1.00",
    )  # fmt: skip
    assert [d[1] for d in await due_dates(w, loan["id"])][:2] == ["paid", "paid"]


async def test_reminders_come_again_before_the_new_date(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await w.pay(loan_id, "437.00", "2026-02-15")
    await close(w, "2026-03-07")  # three days before Mar 10: reminded
    await holiday(w, loan_id, months=1)
    await close(w, "2026-04-07")  # three days before the new date, Apr 10
    reminders = (await w.get("/v1/events?type=installment.due_soon", w.admin))["items"]
    seq2 = [e["data"]["due_date"] for e in reminders if e["data"]["installment_seq"] == 2]
    assert seq2 == ["2026-03-10", "2026-04-10"]


async def test_nothing_ahead_to_defer(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await close(w, "2026-04-11")  # every installment due
    before = await stored()
    body = {"kind": "payment_holiday", "reason": "r", "months": 1}
    refused = await w.post(f"/v1/loans/{loan_id}/restructures", body)
    assert (refused.status_code, refused.json()["code"]) == (409, "nothing_to_defer")
    assert await stored() == before


BAD_HOLIDAYS: list[tuple[dict[str, Any], str]] = [
    ({"months": None}, "months"),
    ({"months": 0}, "months"),
    ({"months": 4}, "months"),
    ({"months": "two"}, "months"),
    ({"amount": "1.00"}, "amount"),
]


@pytest.mark.parametrize(("override", "field"), BAD_HOLIDAYS)
async def test_malformed_holidays_are_refused(
    client: httpx.AsyncClient, override: dict[str, Any], field: str
) -> None:
    w, loan_id = await setup(client)
    body = {"kind": "payment_holiday", "reason": "r", "months": 1}
    await assert_refused(w, loan_id, body, override, field)


async def test_another_kind_s_field_is_refused_as_such_whatever_it_holds(
    client: httpx.AsyncClient,
) -> None:
    """An empty plan on a holiday was told a plan needs an installment (a tester's)."""
    w, loan_id = await setup(client)
    body = {"kind": "payment_holiday", "reason": "r", "months": 2}
    for other in ({"installments": []}, {"amount": 5}, {"installments": "x"}):
        await assert_refused(w, loan_id, body, other, next(iter(other)))
        refused = await w.post(f"/v1/loans/{loan_id}/restructures", {**body, **other})
        assert refused.json()["errors"][0]["message"] == "is not a field of a payment_holiday"


async def test_a_loan_has_six_months_of_holidays_at_most(client: httpx.AsyncClient) -> None:
    """Each holiday is 3 months at most, but several asked at once were each approved: an
    interest-free deferral without end (a tester's). Over the loan's life, 6 months."""
    w, loan_id = await setup(client)
    body = {"kind": "payment_holiday", "reason": "r", "months": 3}
    asked = [(await w.post(f"/v1/loans/{loan_id}/restructures", b, expect=201)).json()
             for b in (body, body, {**body, "months": 1})]  # fmt: skip
    for made in asked[:2]:
        await w.post(f"/v1/restructures/{made['id']}/approve", {}, w.admin, 200)
    late = await w.post(f"/v1/restructures/{asked[2]['id']}/approve", {}, w.admin)
    assert (late.status_code, late.json()["code"]) == (409, "holidays_too_long")
    assert "would come to 7, beyond the 6" in late.json()["detail"]
    assert (await w.get(f"/v1/restructures/{asked[2]['id']}"))["status"] == "pending"
    before = await stored()
    refused = await w.post(f"/v1/loans/{loan_id}/restructures", {**body, "months": 1})
    assert (refused.status_code, refused.json()["errors"][0]["field"]) == (422, "months")
    assert await stored() == before


async def test_a_holiday_cancels_the_open_promises_to_pay(client: httpx.AsyncClient) -> None:
    """A promise for an installment the holiday moved broke on its date with nothing due, and
    announced it (a tester's): the holiday is the new agreement, as a plan is."""
    w, loan_id = await setup(client)
    await w.pay(loan_id, "437.00", "2026-02-14")  # nothing overdue, before the promise
    body = {"amount": "100.00", "due_on": "2026-03-12"}
    made = (await w.post(f"/v1/loans/{loan_id}/promises", body, expect=201)).json()
    await holiday(w, loan_id)
    (promise,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (promise["id"], promise["status"], promise["cancelled_on"]) == (
        made["id"], "cancelled", "2026-02-15",
    )  # fmt: skip
    await close(w, "2026-03-20")
    assert (await w.get("/v1/events?type=promise.broken", w.admin))["items"] == []


async def cancelled_with_a_payment_to_bounce(
    client: httpx.AsyncClient,
) -> tuple[World, str, dict[str, Any]]:
    """A promise of 100.00 that counted a payment of 50.00, cancelled by a holiday."""
    w, loan_id = await setup(client)
    await w.pay(loan_id, "437.00", "2026-02-14")
    await w.post(f"/v1/loans/{loan_id}/promises", {"amount": "100.00", "due_on": "2026-03-12"},
                 expect=201)  # fmt: skip
    bounced = await w.pay(loan_id, "50.00", "2026-02-15")
    await holiday(w, loan_id)
    return w, loan_id, bounced


async def test_a_promise_the_holiday_cancelled_gives_back_a_bounced_payment(
    client: httpx.AsyncClient,
) -> None:
    """Cancelled by the holiday with 50.00 counted, which then bounced: it read 50.00 paid,
    and took the next payment from the promise taken after, which broke with the borrower
    paid (a tester's)."""
    w, loan_id, bounced = await cancelled_with_a_payment_to_bounce(client)
    await w.post(f"/v1/payments/{bounced['id']}/reverse", {"reason": "nsf"}, expect=200)
    (cancelled,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (cancelled["status"], cancelled["paid"]) == ("cancelled", "0.00")
    later = {"amount": "50.00", "due_on": "2026-03-01"}
    made = (await w.post(f"/v1/loans/{loan_id}/promises", later, expect=201)).json()
    await w.pay(loan_id, "50.00", "2026-02-15")
    promises = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert [(p["id"], p["status"]) for p in promises][1:] == [(made["id"], "kept")]


async def test_money_recorded_after_the_holiday_is_not_the_cancelled_promises(
    client: httpx.AsyncClient,
) -> None:
    """Cancelled with 50.00 counted, which bounced after a payment of the same day, recorded
    after the holiday, had kept a promise taken since: cut by the day, the cancelled promise
    took that payment back and the newer promise reopened with the borrower paid (a
    re-verifier's)."""
    w, loan_id, bounced = await cancelled_with_a_payment_to_bounce(client)
    later = {"amount": "50.00", "due_on": "2026-03-01"}
    made = (await w.post(f"/v1/loans/{loan_id}/promises", later, expect=201)).json()
    await w.pay(loan_id, "50.00", "2026-02-15")  # the holiday's day, recorded after it
    await w.post(f"/v1/payments/{bounced['id']}/reverse", {"reason": "nsf"}, expect=200)
    cancelled, kept = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (cancelled["status"], cancelled["paid"]) == ("cancelled", "0.00")
    assert (kept["id"], kept["status"], kept["paid"]) == (made["id"], "kept", "50.00")
