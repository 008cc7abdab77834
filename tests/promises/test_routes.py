"""Promises to pay through the API: taken, listed and refused; kept by payments; broken by the
close (once), which raises ``broken_promise``; and the flag's end."""

from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.events.models import Event
from app.promises.models import Promise
from tests.factories import World, world


async def setup(client: httpx.AsyncClient) -> tuple[World, str]:
    """A loan of 1200.00 over 3 months from 2026-01-10 (412.00 due Feb 10, 408.00 Mar 10,
    404.00 Apr 10), 3 days' grace, no late fee; booked back-dated before the first close, of
    Feb 15, which finds it 5 days past due (no need to walk the 36 dates from January)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3)  # fmt: skip
    made = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    await close(w, "2026-02-15")
    return w, str(made["id"])


async def close(w: World, as_of: str) -> None:
    await w.post("/v1/close-runs", {"as_of": as_of}, headers=w.admin, expect=201)


async def promise(w: World, loan_id: str, amount: str = "412.00",
                  due_on: str = "2026-02-20") -> dict[str, Any]:  # fmt: skip
    body = {"amount": amount, "due_on": due_on}
    return dict((await w.post(f"/v1/loans/{loan_id}/promises", body, expect=201)).json())


async def promises(w: World, loan_id: str) -> list[dict[str, Any]]:
    return list((await w.get(f"/v1/loans/{loan_id}/promises"))["items"])


async def flags(w: World, loan_id: str, status: str = "open") -> dict[str, dict[str, Any]]:
    page = await w.get(f"/v1/risk/flags?loan_id={loan_id}&status={status}", headers=w.admin)
    return {f["code"]: f for f in page["items"]}


async def broken_events(w: World) -> list[dict[str, Any]]:
    page = await w.get("/v1/events?type=promise.broken", headers=w.admin)
    return list(page["items"])


async def stored() -> tuple[int, Counter[str]]:
    async with session_scope() as session:
        count = await session.scalar(select(func.count()).select_from(Promise))
        return int(count or 0), Counter(await session.scalars(select(Event.type)))


async def test_a_promise_is_taken_and_listed(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    body = {"amount": "412.00", "due_on": "2026-02-20", "note": "called, will pay on payday"}
    made = (await w.post(f"/v1/loans/{loan_id}/promises", body, expect=201)).json()
    assert made["id"].startswith("prom_")
    assert {k: made[k] for k in ("loan_id", "amount", "currency", "paid", "promised_on",
                                 "due_on", "status", "kept_on", "broken_on", "note")} == {
        "loan_id": loan_id, "amount": "412.00", "currency": "CNY", "paid": "0.00",
        "promised_on": "2026-02-15", "due_on": "2026-02-20", "status": "open", "kept_on": None,
        "broken_on": None, "note": "called, will pay on payday",
    }  # fmt: skip
    assert made["created_by"]
    assert await promises(w, loan_id) == [made]
    assert [p["id"] for p in await promises(w, loan_id)] == [made["id"]]
    dashboard = await w.get(f"/v1/loans/{loan_id}/promises", headers=w.admin)
    assert dashboard["items"] == [made]


async def test_one_open_promise_per_loan(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    first = await promise(w, loan_id)
    before = await stored()
    second = await w.post(f"/v1/loans/{loan_id}/promises",
                          {"amount": "100.00", "due_on": "2026-02-25"})  # fmt: skip
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    assert second.json()["code"] == "promise_already_open"
    assert first["id"] in second.json()["detail"]
    assert await stored() == before


async def test_pages_of_promises(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    first = await promise(w, loan_id, "100.00")
    await w.pay(loan_id, "100.00", "2026-02-16")  # kept: the next may be taken
    second = await promise(w, loan_id, "50.00", "2026-02-28")
    page = await w.get(f"/v1/loans/{loan_id}/promises?limit=1")
    assert [p["id"] for p in page["items"]] == [first["id"]]
    assert page["items"][0]["status"] == "kept"
    rest = await w.get(f"/v1/loans/{loan_id}/promises?limit=1&cursor={page['next_cursor']}")
    assert [p["id"] for p in rest["items"]] == [second["id"]]
    assert rest["next_cursor"] is None


async def test_other_merchants_and_roles(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    other = await world(client)
    body = {"amount": "100.00", "due_on": "2026-02-20"}
    refused = await client.post(f"/v1/loans/{loan_id}/promises", json=body,
                                headers=other.merchant)  # fmt: skip
    assert (refused.status_code, refused.json()["code"]) == (404, "loan_not_found")
    listed = await client.get(f"/v1/loans/{loan_id}/promises", headers=other.merchant)
    assert listed.status_code == 404
    missing = await w.post("/v1/loans/loan_nope/promises", body)
    assert missing.status_code == 404
    from app.api_keys.models import Role
    from tests.factories import api_key, auth

    dashboard = auth(await api_key(Role.DASHBOARD))
    assert (await w.post(f"/v1/loans/{loan_id}/promises", body, dashboard)).status_code == 403
    assert (await client.get(f"/v1/loans/{loan_id}/promises", headers=dashboard)).is_success
    assert (await w.post(f"/v1/loans/{loan_id}/promises", body, w.admin)).status_code == 201
    assert (await stored())[0] == 1


BAD_PROMISES: list[tuple[str, dict[str, Any], str]] = [
    ("amount as a JSON number", {"amount": 412.0}, "amount"),
    ("zero amount", {"amount": "0.00"}, "amount"),
    ("negative amount", {"amount": "-1.00"}, "amount"),
    ("three decimals for CNY", {"amount": "1.001"}, "amount"),
    ("more than the payoff", {"amount": "1220.01"}, "amount"),
    ("missing amount", {"amount": None}, "amount"),
    ("due before the business date", {"due_on": "2026-02-14"}, "due_on"),
    # Its close has run: only a payment back-dated to it could keep the promise.
    ("due on the business date", {"due_on": "2026-02-15"}, "due_on"),
    ("due beyond 90 days", {"due_on": "2026-05-17"}, "due_on"),
    ("not a date", {"due_on": "2026-02-30"}, "due_on"),
    ("missing due date", {"due_on": None}, "due_on"),
    ("unknown field", {"colour": "red"}, "colour"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "override", "field"), BAD_PROMISES,
                         ids=[c[0] for c in BAD_PROMISES])  # fmt: skip
async def test_malformed_promises_are_refused(
    client: httpx.AsyncClient, case: str, override: dict[str, Any], field: str
) -> None:
    w, loan_id = await setup(client)
    before = await stored()
    body = {k: v for k, v in {"amount": "412.00", "due_on": "2026-02-20", **override}.items()
            if v is not None}  # fmt: skip
    response = await w.post(f"/v1/loans/{loan_id}/promises", body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == [field], problem
    if case == "more than the payoff":
        assert problem["code"] == "amount_exceeds_payoff"
        assert "1220.00" in problem["detail"]  # 412.00 due, 408.00 current, 400.00 later
    assert await stored() == before


async def test_the_whole_payoff_and_the_horizon_are_accepted(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await promise(w, loan_id, "1220.00", "2026-05-16")  # 90 days after Feb 15
    assert made["status"] == "open"


async def test_a_promise_falls_due_after_the_closed_dates_and_the_disbursement(
    client: httpx.AsyncClient,
) -> None:
    """The first date not closed is the earliest due date; on a loan disbursed after it, the
    disbursement is (no payment can precede it, so an earlier promise could only break)."""
    w, loan_id = await setup(client)
    assert (await promise(w, loan_id, "100.00", "2026-02-16"))["status"] == "open"
    later = await w.loan(principal="600.00", term=3, disbursed_on="2026-02-20")
    refused = await w.post(f"/v1/loans/{later['id']}/promises",
                           {"amount": "50.00", "due_on": "2026-02-19"})  # fmt: skip
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["due_on"]
    assert "2026-02-20" in refused.json()["errors"][0]["message"]
    assert (await promise(w, later["id"], "50.00", "2026-02-20"))["status"] == "open"


async def test_no_promise_on_a_paid_off_loan(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    payoff = (await w.get(f"/v1/loans/{loan_id}"))["balances"]["payoff_amount"]
    await w.pay(loan_id, payoff)  # today's payoff, received today
    before = await stored()
    refused = await w.post(f"/v1/loans/{loan_id}/promises",
                           {"amount": "10.00", "due_on": "2026-02-20"})  # fmt: skip
    assert (refused.status_code, refused.json()["code"]) == (409, "loan_not_active")
    assert await stored() == before


async def test_kept_by_payments_in_its_window(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await promise(w, loan_id)
    await w.pay(loan_id, "200.00", "2026-02-16")
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"]) == ("open", "200.00")
    await w.pay(loan_id, "212.00", "2026-02-20")  # the due date itself still counts
    (got,) = await promises(w, loan_id)
    assert (got["id"], got["status"], got["paid"], got["kept_on"]) == (
        made["id"], "kept", "412.00", "2026-02-20",
    )  # fmt: skip
    await close(w, "2026-02-22")
    (got,) = await promises(w, loan_id)
    assert got["status"] == "kept"
    assert await broken_events(w) == []
    assert "broken_promise" not in await flags(w, loan_id)
    assert "broken_promise" not in await flags(w, loan_id, "cleared")


async def test_broken_at_the_close_once(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await promise(w, loan_id)
    await w.pay(loan_id, "100.00", "2026-02-16")
    await w.pay(loan_id, "300.00", "2026-02-21")  # after the due date: does not count
    await close(w, "2026-02-20")  # the due date: still open
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"]) == ("open", "100.00")
    assert "broken_promise" not in await flags(w, loan_id)

    await close(w, "2026-02-21")
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"], got["broken_on"]) == ("broken", "100.00", "2026-02-21")
    (event,) = await broken_events(w)
    assert {k: v for k, v in event["data"].items() if k != "sequence"} == {
        "promise_id": made["id"], "loan_id": loan_id, "borrower_id": made_borrower(event),
        "merchant_id": w.merchant_id, "currency": "CNY", "amount": "412.00", "paid": "100.00",
        "shortfall": "312.00", "promised_on": "2026-02-15", "due_on": "2026-02-20",
        "broken_on": "2026-02-21", "restructure_id": None, "plan_installment": None,
    }  # fmt: skip
    flag = (await flags(w, loan_id))["broken_promise"]
    assert (flag["severity"], flag["raised_on"]) == ("high", "2026-02-21")
    evidence = flag["evidence"]
    assert {k: evidence[k] for k in ("promise_id", "amount", "paid", "due_on", "broken_on")} == {
        "promise_id": made["id"], "amount": "412.00", "paid": "100.00",
        "due_on": "2026-02-20", "broken_on": "2026-02-21",
    }  # fmt: skip
    run = await w.get("/v1/close-runs/2026-02-21", headers=w.admin)
    assert run["counts"]["promises_broken"] == 1

    await close(w, "2026-02-21")  # rerun
    await close(w, "2026-02-23")
    assert len(await broken_events(w)) == 1
    raised = (await client.get("/v1/events?type=risk.flag_raised", headers=w.admin)).json()
    assert [e["data"]["code"] for e in raised["items"]].count("broken_promise") == 1
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["broken_on"]) == ("broken", "2026-02-21")
    # A broken promise makes room for the next.
    await promise(w, loan_id, "100.00", "2026-02-28")


def made_borrower(event: dict[str, Any]) -> str:
    borrower_id = event["data"]["borrower_id"]
    assert borrower_id.startswith("bor")
    return str(borrower_id)


async def test_the_flag_clears_when_the_arrears_are_paid(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await promise(w, loan_id)
    await close(w, "2026-02-21")
    assert "broken_promise" in await flags(w, loan_id)
    overdue = (await w.get(f"/v1/loans/{loan_id}"))["balances"]["overdue_amount"]
    await w.pay(loan_id, overdue, "2026-02-21")  # at once, in the payment's transaction
    assert "broken_promise" not in await flags(w, loan_id)
    cleared = (await flags(w, loan_id, "cleared"))["broken_promise"]
    assert cleared["cleared_on"] == "2026-02-21"  # the business date
    (got,) = await promises(w, loan_id)
    assert got["status"] == "broken"  # paying late does not mend a broken promise
    await close(w, "2026-02-23")
    assert "broken_promise" not in await flags(w, loan_id)
    # Past due again within the window, on an installment due after the promise's date: not
    # the arrears the promise was about, so no broken promise (it came back: a tester's).
    await close(w, "2026-03-14")
    assert (await w.get(f"/v1/loans/{loan_id}"))["days_past_due"] == 4
    assert "broken_promise" not in await flags(w, loan_id)


async def test_a_promise_taken_while_nothing_is_past_due_flags_no_later_arrears(
    client: httpx.AsyncClient,
) -> None:
    w, loan_id = await setup(client)
    overdue = (await w.get(f"/v1/loans/{loan_id}"))["balances"]["overdue_amount"]
    await w.pay(loan_id, overdue, "2026-02-14")  # before the promise: it does not count
    await promise(w, loan_id, "100.00", "2026-02-20")  # ahead of the March installment
    await close(w, "2026-02-21")
    assert len(await broken_events(w)) == 1
    assert "broken_promise" not in await flags(w, loan_id)
    await close(w, "2026-03-14")  # the March installment missed
    assert (await w.get(f"/v1/loans/{loan_id}"))["days_past_due"] == 4
    assert "broken_promise" not in await flags(w, loan_id)


async def test_a_promise_taken_ahead_of_the_installment_it_covers_is_flagged_broken(
    client: httpx.AsyncClient,
) -> None:
    """Taken while nothing was past due, for the installment due on its date: left unpaid,
    those are the arrears it was about (a tester read the docs as saying otherwise)."""
    w, loan_id = await setup(client)
    overdue = (await w.get(f"/v1/loans/{loan_id}"))["balances"]["overdue_amount"]
    await w.pay(loan_id, overdue, "2026-02-14")
    await promise(w, loan_id, "408.00", "2026-03-10")  # the March installment, on its date
    await close(w, "2026-03-11")
    assert [e["data"]["paid"] for e in await broken_events(w)] == ["0.00"]
    flag = (await flags(w, loan_id))["broken_promise"]
    assert (flag["raised_on"], flag["evidence"]["due_on"]) == ("2026-03-11", "2026-03-10")


async def test_a_payment_in_time_recorded_after_the_break_mends_it(
    client: httpx.AsyncClient,
) -> None:
    """A gateway slow to report: the money came in the promise's window, so the promise was
    kept, as a late fee is withdrawn for such a payment (a black-box tester's)."""
    w, loan_id = await setup(client)
    made = await promise(w, loan_id)
    await close(w, "2026-02-21")
    assert "broken_promise" in await flags(w, loan_id)
    await w.pay(loan_id, "100.00", "2026-02-18")
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"], got["broken_on"]) == ("broken", "100.00", "2026-02-21")

    mending = await w.pay(loan_id, "312.00", "2026-02-19")
    (got,) = await promises(w, loan_id)
    assert (got["id"], got["status"], got["paid"], got["kept_on"], got["broken_on"]) == (
        made["id"], "kept", "412.00", "2026-02-19", None,
    )  # fmt: skip
    assert "broken_promise" not in await flags(w, loan_id)
    assert "broken_promise" in await flags(w, loan_id, "cleared")
    await close(w, "2026-02-23")
    (got,) = await promises(w, loan_id)
    assert got["status"] == "kept"
    assert len(await broken_events(w)) == 1

    # Bounced, the money never kept it: broken again at once, and announced again.
    await w.post(f"/v1/payments/{mending['id']}/reverse", {"reason": "nsf"}, expect=200)
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"], got["broken_on"]) == ("broken", "100.00", "2026-02-24")
    assert [e["data"]["paid"] for e in await broken_events(w)] == ["0.00", "100.00"]


async def test_the_flag_clears_after_the_window(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await promise(w, loan_id)
    await close(w, "2026-02-21")
    await close(w, "2026-04-21")  # 59 days after the break, still past due
    assert "broken_promise" in await flags(w, loan_id)
    await close(w, "2026-04-22")  # 60 days
    assert "broken_promise" not in await flags(w, loan_id)
    assert (await w.get(f"/v1/loans/{loan_id}"))["days_past_due"] > 0


async def test_the_window_is_a_rule(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    rules = (await w.get("/v1/risk/rules", headers=w.admin))["rules"]
    assert rules["broken_promise_days"] == 60
    await client.put("/v1/risk/rules", json={**rules, "broken_promise_days": 2}, headers=w.admin)
    await promise(w, loan_id)
    await close(w, "2026-02-22")
    assert "broken_promise" in await flags(w, loan_id)
    await close(w, "2026-02-23")
    assert "broken_promise" not in await flags(w, loan_id)


async def test_a_reversal_breaks_a_kept_promise_past_its_date(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await promise(w, loan_id)
    payment = await w.pay(loan_id, "412.00", "2026-02-16")
    await close(w, "2026-02-21")
    (got,) = await promises(w, loan_id)
    assert got["status"] == "kept"
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    (got,) = await promises(w, loan_id)
    # At once, dated the next date to close: the bounce is today's, after the business date.
    assert (got["status"], got["paid"], got["broken_on"]) == ("broken", "0.00", "2026-02-22")
    assert len(await broken_events(w)) == 1
    assert "broken_promise" in await flags(w, loan_id)


async def test_a_reversal_before_the_date_reopens_it(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await promise(w, loan_id)
    payment = await w.pay(loan_id, "412.00", "2026-02-16")
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"], got["kept_on"]) == ("open", "0.00", None)
    assert await broken_events(w) == []


async def test_a_cancelled_loan_cancels_its_promise(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await promise(w, loan_id)
    await w.post(f"/v1/loans/{loan_id}/cancel", {"reason": "goods returned"}, expect=200)
    # At once, on the business date, as a payoff would (it stayed open until the next close).
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["cancelled_on"]) == ("cancelled", "2026-02-15")
    await close(w, "2026-02-21")
    assert await promises(w, loan_id) == [got]
    assert await broken_events(w) == []


async def test_a_reversal_on_the_cancelled_loan_takes_back_what_its_promise_counted(
    client: httpx.AsyncClient,
) -> None:
    """Cancelled with the loan, having counted a payment that then bounced: it went on
    reading the bounced money as paid (a re-verifier's)."""
    w, loan_id = await setup(client)
    await promise(w, loan_id)
    payment = await w.pay(loan_id, "100.00", "2026-02-15")
    await w.post(f"/v1/loans/{loan_id}/cancel", {"reason": "goods returned"}, expect=200)
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"]) == ("cancelled", "100.00")
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    (got,) = await promises(w, loan_id)
    assert (got["status"], got["paid"]) == ("cancelled", "0.00")


# -- money counts toward one promise at most ---------------------------------------------------


async def tv_loan(client: httpx.AsyncClient) -> tuple[World, str]:
    """A television's loan as the black-box tester had it (the TV12 product at 12.99 %):
    3000.00 over 6 months from 2026-10-20, the first installment due Nov 20; closed up to
    Nov 3, nothing due yet."""
    w = await world(client, annual_interest_rate="0.1299")
    await close(w, "2026-10-20")
    made = await w.loan(principal="3000.00", term=6, disbursed_on="2026-10-20")
    await close(w, "2026-11-03")
    return w, str(made["id"])


def by_id(items: list[dict[str, Any]]) -> dict[str, tuple[str, str, str | None, str | None]]:
    return {p["id"]: (p["status"], p["paid"], p["kept_on"], p["broken_on"]) for p in items}


async def test_a_payment_keeps_one_promise_not_the_next(client: httpx.AsyncClient) -> None:
    w, loan_id = await tv_loan(client)
    first = await promise(w, loan_id, "100.00", "2026-11-10")
    await w.pay(loan_id, "100.00", "2026-11-03")
    second = await promise(w, loan_id, "100.00", "2026-11-25")
    # The 100.00 went to the first promise: the second waits for money of its own.
    assert (second["status"], second["paid"], second["kept_on"]) == ("open", "0.00", None)
    assert by_id(await promises(w, loan_id)) == {
        first["id"]: ("kept", "100.00", "2026-11-03", None),
        second["id"]: ("open", "0.00", None, None),
    }
    # Open, it holds the line: no third promise on the same money.
    third = await w.post(f"/v1/loans/{loan_id}/promises",
                         {"amount": "100.00", "due_on": "2026-11-30"})  # fmt: skip
    assert (third.status_code, third.json()["code"]) == (409, "promise_already_open")

    await close(w, "2026-11-26")  # the close reckons the second as the payments did
    assert by_id(await promises(w, loan_id))[second["id"]] == (
        "broken", "0.00", None, "2026-11-26",
    )  # fmt: skip
    (event,) = await broken_events(w)
    assert {k: event["data"][k] for k in ("promise_id", "amount", "paid", "shortfall")} == {
        "promise_id": second["id"], "amount": "100.00", "paid": "0.00", "shortfall": "100.00",
    }  # fmt: skip


async def test_new_money_keeps_the_next_promise(client: httpx.AsyncClient) -> None:
    w, loan_id = await tv_loan(client)
    first = await promise(w, loan_id, "100.00", "2026-11-10")
    await w.pay(loan_id, "100.00", "2026-11-03")
    second = await promise(w, loan_id, "100.00", "2026-11-25")
    await w.pay(loan_id, "60.00", "2026-11-12")
    assert by_id(await promises(w, loan_id))[second["id"]] == ("open", "60.00", None, None)
    await w.pay(loan_id, "40.00", "2026-11-20")
    assert by_id(await promises(w, loan_id)) == {
        first["id"]: ("kept", "100.00", "2026-11-03", None),
        second["id"]: ("kept", "100.00", "2026-11-20", None),
    }
    await close(w, "2026-11-26")
    assert await broken_events(w) == []


async def test_a_reversal_reopens_a_promise_beside_the_newer_one(
    client: httpx.AsyncClient,
) -> None:
    w, loan_id = await tv_loan(client)
    first = await promise(w, loan_id, "100.00", "2026-11-10")
    payment = await w.pay(loan_id, "100.00", "2026-11-03")
    second = await promise(w, loan_id, "100.00", "2026-11-25")
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    # Neither date has passed: nothing is broken. The first is open again beside the second,
    # and counts the money first.
    assert by_id(await promises(w, loan_id)) == {
        first["id"]: ("open", "0.00", None, None),
        second["id"]: ("open", "0.00", None, None),
    }
    assert await broken_events(w) == []

    await w.pay(loan_id, "150.00", "2026-11-05")
    assert by_id(await promises(w, loan_id)) == {
        first["id"]: ("kept", "100.00", "2026-11-05", None),
        second["id"]: ("open", "50.00", None, None),
    }
    # Each is broken only after its own date, by what it counted.
    await close(w, "2026-11-25")
    assert await broken_events(w) == []
    await close(w, "2026-11-26")
    assert by_id(await promises(w, loan_id))[second["id"]] == (
        "broken", "50.00", None, "2026-11-26",
    )  # fmt: skip
    (event,) = await broken_events(w)
    assert (event["data"]["promise_id"], event["data"]["shortfall"]) == (second["id"], "50.00")


async def test_reopened_side_by_side_each_breaks_on_its_own_date(
    client: httpx.AsyncClient,
) -> None:
    w, loan_id = await tv_loan(client)
    first = await promise(w, loan_id, "100.00", "2026-11-10")
    payment = await w.pay(loan_id, "100.00", "2026-11-03")
    second = await promise(w, loan_id, "100.00", "2026-11-25")
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    await close(w, "2026-11-11")
    assert by_id(await promises(w, loan_id)) == {
        first["id"]: ("broken", "0.00", None, "2026-11-11"),
        second["id"]: ("open", "0.00", None, None),
    }
    await w.pay(loan_id, "100.00", "2026-11-20")  # after the first's date: the second's
    assert by_id(await promises(w, loan_id))[second["id"]] == (
        "kept", "100.00", "2026-11-20", None,
    )  # fmt: skip
    await close(w, "2026-11-26")
    assert [e["data"]["promise_id"] for e in await broken_events(w)] == [first["id"]]


async def test_a_reversal_on_a_past_due_loan_raises_no_flag_early(
    client: httpx.AsyncClient,
) -> None:
    w, loan_id = await setup(client)  # 5 days past due on Feb 15
    first = await promise(w, loan_id, "100.00", "2026-02-20")
    payment = await w.pay(loan_id, "100.00", "2026-02-15")
    second = await promise(w, loan_id, "100.00", "2026-02-28")
    assert (second["status"], second["paid"]) == ("open", "0.00")
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    assert by_id(await promises(w, loan_id)) == {
        first["id"]: ("open", "0.00", None, None),
        second["id"]: ("open", "0.00", None, None),
    }
    assert await broken_events(w) == []
    assert "broken_promise" not in await flags(w, loan_id)
    assert "broken_promise" not in await flags(w, loan_id, "cleared")

    await close(w, "2026-02-21")  # the first's date has passed: its flag, naming it
    evidence = (await flags(w, loan_id))["broken_promise"]["evidence"]
    assert (evidence["promise_id"], evidence["due_on"]) == (first["id"], "2026-02-20")


async def test_a_promise_or_plan_on_the_night_of_a_late_fee_is_held_to_the_payments_payoff(
    client: httpx.AsyncClient,
) -> None:
    """The close of Feb 13, the last day of installment 1's grace, charged it its late fee: a
    payoff dated Feb 13 withdraws it (that close counts the day's payments, and charges no
    paid-off loan). A promise or a plan of that date was held to the payoff with the fee,
    20.00 more than a payment of the date may pay (a tester's)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    loan_id = (await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10"))["id"]
    await close(w, "2026-02-13")
    assert (await w.get(f"/v1/loans/{loan_id}"))["balances"]["fees_outstanding"] == "20.00"
    promise = await w.post(f"/v1/loans/{loan_id}/promises",
                           {"amount": "1220.01", "due_on": "2026-02-20"})  # fmt: skip
    plan = await w.post(f"/v1/loans/{loan_id}/restructures", {
        "kind": "repayment_plan", "reason": "x",
        "installments": [{"due_on": "2026-02-20", "amount": "1220.01"}],
    })  # fmt: skip
    for refused, field in ((promise, "amount"), (plan, "installments")):
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "amount_exceeds_payoff"
        assert [e["field"] for e in refused.json()["errors"]] == [field]
        assert "payoff amount 1220.00 on 2026-02-13" in refused.json()["detail"]
    payment = await w.post(f"/v1/loans/{loan_id}/payments",
                           {"amount": "1220.01", "received_on": "2026-02-13"})  # fmt: skip
    assert "the payoff amount 1220.00 on 2026-02-13" in payment.json()["detail"]
    await w.post(f"/v1/loans/{loan_id}/promises", {"amount": "1220.00", "due_on": "2026-02-20"},
                 expect=201)  # fmt: skip
