"""Repayment plans through the API: requested, approved or rejected; kept by payments, broken
by the close (which raises ``broken_promise``), replaced by a newer plan; and
``partial_payments`` resting while one runs."""

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.api_keys.models import Role
from app.db import session_scope
from app.events.models import Event
from app.promises.models import Promise
from app.relief.models import Restructure
from tests.factories import World, api_key, auth, world
from tests.relief.books import close, late_loan

PLAN = [{"due_on": "2026-02-20", "amount": "200.00"},
        {"due_on": "2026-03-05", "amount": "212.00"}]  # fmt: skip


async def setup(client: httpx.AsyncClient) -> tuple[World, str]:
    return await late_loan(client)


async def request(w: World, loan_id: str, plan: list[dict[str, str]] = PLAN) -> dict[str, Any]:
    body = {"kind": "repayment_plan", "reason": "lost a job; paid again from March",
            "installments": plan}  # fmt: skip
    return dict((await w.post(f"/v1/loans/{loan_id}/restructures", body, expect=201)).json())


async def approve(w: World, restructure: dict[str, Any]) -> dict[str, Any]:
    path = f"/v1/loans/{restructure['loan_id']}/restructures/{restructure['id']}/approve"
    return dict((await w.post(path, {"note": "agreed on the phone"}, w.admin, 200)).json())


async def plan(w: World, restructure_id: str) -> dict[str, Any]:
    return dict((await w.get(f"/v1/restructures/{restructure_id}"))["plan"])


def states(got: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["status"], i["paid"]) for i in got["installments"]]


async def flags(w: World, loan_id: str, status: str = "open") -> dict[str, dict[str, Any]]:
    page = await w.get(f"/v1/risk/flags?loan_id={loan_id}&status={status}", headers=w.admin)
    return {f["code"]: f for f in page["items"]}


async def events(w: World, type_: str) -> list[dict[str, Any]]:
    return list((await w.get(f"/v1/events?type={type_}", headers=w.admin))["items"])


async def stored() -> tuple[int, int, Counter[str]]:
    async with session_scope() as session:
        restructures = await session.scalar(select(func.count()).select_from(Restructure))
        promises = await session.scalar(select(func.count()).select_from(Promise))
        return (int(restructures or 0), int(promises or 0),
                Counter(await session.scalars(select(Event.type))))  # fmt: skip


async def test_requested_then_approved(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    before = await stored()
    made = await request(w, loan_id)
    assert made["id"].startswith("rst_")
    assert {k: made[k] for k in ("loan_id", "kind", "status", "currency", "requested_on",
                                 "decided_by", "decided_on")} == {
        "loan_id": loan_id, "kind": "repayment_plan", "status": "pending", "currency": "CNY",
        "requested_on": "2026-02-15", "decided_by": None, "decided_on": None,
    }  # fmt: skip
    assert made["plan"] == {
        "status": "proposed", "starts_on": None, "total": "412.00", "paid": "0.00",
        "installments": [
            {"seq": 1, "due_on": "2026-02-20", "amount": "200.00", "paid": "0.00",
             "status": "proposed", "kept_on": None, "broken_on": None},
            {"seq": 2, "due_on": "2026-03-05", "amount": "212.00", "paid": "0.00",
             "status": "proposed", "kept_on": None, "broken_on": None},
        ],
    }  # fmt: skip
    # A request changes nothing on the loan and announces nothing.
    assert await stored() == (before[0] + 1, before[1], before[2])
    assert (await w.get(f"/v1/loans/{loan_id}/restructures"))["items"] == [made]
    assert await w.get(f"/v1/restructures/{made['id']}") == made
    assert await w.get(f"/v1/loans/{loan_id}/restructures/{made['id']}", w.admin) == made

    refused = await w.post(f"/v1/loans/{loan_id}/restructures/{made['id']}/approve", {})
    assert refused.status_code == 403  # the merchant asks, an admin decides
    approved = await approve(w, made)
    assert {k: approved[k] for k in ("status", "decided_on", "decision_note")} == {
        "status": "approved", "decided_on": "2026-02-15", "decision_note": "agreed on the phone",
    }  # fmt: skip
    assert approved["decided_by"]
    assert approved["decided_at"]
    assert approved["plan"]["status"] == "active"
    assert approved["plan"]["starts_on"] == "2026-02-15"
    assert states(approved["plan"]) == [("open", "0.00"), ("open", "0.00")]
    (event,) = await events(w, "restructure.approved")
    assert {k: v for k, v in event["data"].items() if k != "sequence"} == {
        "restructure_id": made["id"], "kind": "repayment_plan", "loan_id": loan_id,
        "borrower_id": made_borrower(event), "merchant_id": w.merchant_id, "currency": "CNY",
        "reason": "lost a job; paid again from March", "approved_on": "2026-02-15",
        "installments": [{"seq": 1, "due_on": "2026-02-20", "amount": "200.00"},
                         {"seq": 2, "due_on": "2026-03-05", "amount": "212.00"}],
        "total": "412.00",
    }  # fmt: skip
    # Decided once.
    for action in ("approve", "reject"):
        again = await w.post(f"/v1/restructures/{made['id']}/{action}", {}, w.admin)
        assert (again.status_code, again.json()["code"]) == (409, "restructure_not_pending")
    assert len(await events(w, "restructure.approved")) == 1
    # The plan's installments are its own, not promises taken one at a time.
    assert (await w.get(f"/v1/loans/{loan_id}/promises"))["items"] == []


def made_borrower(event: dict[str, Any]) -> str:
    borrower_id = event["data"]["borrower_id"]
    assert borrower_id.startswith("bor")
    return str(borrower_id)


async def test_kept_installment_by_installment(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    await w.pay(loan_id, "250.00", "2026-02-16")  # ahead on the second installment
    got = await plan(w, made["id"])
    assert states(got) == [("kept", "200.00"), ("open", "50.00")]
    assert got["installments"][0]["kept_on"] == "2026-02-16"
    assert (got["status"], got["paid"]) == ("active", "250.00")
    await close(w, "2026-02-28")
    await w.pay(loan_id, "162.00", "2026-03-05")  # the due date itself still counts
    got = await plan(w, made["id"])
    assert states(got) == [("kept", "200.00"), ("kept", "212.00")]
    assert (got["status"], got["paid"]) == ("completed", "412.00")
    await close(w, "2026-03-07")
    assert await events(w, "promise.broken") == []
    assert "broken_promise" not in await flags(w, loan_id)


async def test_payments_of_the_approval_date_count(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    pending = await request(w, loan_id)
    await w.pay(loan_id, "100.00", "2026-02-14")  # before the plan: does not count
    await w.pay(loan_id, "200.00", "2026-02-15")
    got = (await approve(w, pending))["plan"]
    assert states(got) == [("kept", "200.00"), ("open", "0.00")]


async def test_broken_by_the_close_once(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    await w.pay(loan_id, "150.00", "2026-02-18")
    await close(w, "2026-02-20")  # the due date: still open
    assert (await plan(w, made["id"]))["status"] == "active"
    assert "broken_promise" not in await flags(w, loan_id)

    await close(w, "2026-02-21")
    got = await plan(w, made["id"])
    assert got["status"] == "broken"
    assert states(got) == [("broken", "150.00"), ("cancelled", "0.00")]
    assert got["installments"][0]["broken_on"] == "2026-02-21"
    (event,) = await events(w, "promise.broken")
    assert {k: event["data"][k] for k in ("restructure_id", "plan_installment", "loan_id",
                                          "amount", "paid", "shortfall", "promised_on",
                                          "due_on", "broken_on")} == {
        "restructure_id": made["id"], "plan_installment": 1, "loan_id": loan_id,
        "amount": "200.00", "paid": "150.00", "shortfall": "50.00",
        "promised_on": "2026-02-15", "due_on": "2026-02-20", "broken_on": "2026-02-21",
    }  # fmt: skip
    flag = (await flags(w, loan_id))["broken_promise"]
    assert (flag["severity"], flag["raised_on"]) == ("high", "2026-02-21")
    assert {k: flag["evidence"][k] for k in ("restructure_id", "plan_installment", "amount",
                                              "paid", "due_on")} == {
        "restructure_id": made["id"], "plan_installment": 1, "amount": "200.00",
        "paid": "150.00", "due_on": "2026-02-20",
    }  # fmt: skip
    run = await w.get("/v1/close-runs/2026-02-21", headers=w.admin)
    assert (run["counts"]["promises_broken"], run["counts"]["promises_cancelled"]) == (1, 1)
    await close(w, "2026-02-21")  # rerun
    await close(w, "2026-03-06")  # past the second installment's date: cancelled, not broken
    assert len(await events(w, "promise.broken")) == 1

    overdue = (await w.get(f"/v1/loans/{loan_id}"))["balances"]["overdue_amount"]
    await w.pay(loan_id, overdue, "2026-03-06")  # the arrears paid: the flag's episode ends
    assert "broken_promise" not in await flags(w, loan_id)
    assert (await plan(w, made["id"]))["status"] == "broken"  # paying late mends nothing


async def test_a_reversal_after_the_break_takes_back_what_the_plan_counted(
    client: httpx.AsyncClient,
) -> None:
    """Broken with 50.00 counted, which then bounced: the cancelled installment kept the
    50.00, and took the next payment from a promise taken since, which broke with the
    borrower paid (a tester's)."""
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    paid = await w.pay(loan_id, "50.00", "2026-02-18")
    await close(w, "2026-02-21")
    assert states(await plan(w, made["id"])) == [("broken", "50.00"), ("cancelled", "0.00")]
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    got = await plan(w, made["id"])
    assert (got["paid"], states(got)) == ("0.00", [("broken", "0.00"), ("cancelled", "0.00")])
    promise = (
        await w.post(
            f"/v1/loans/{loan_id}/promises", {"amount": "50.00", "due_on": "2026-02-28"}, expect=201
        )
    ).json()
    await w.pay(loan_id, "50.00", "2026-02-21")
    kept = await w.get(f"/v1/loans/{loan_id}/promises")
    assert [(p["id"], p["status"], p["paid"]) for p in kept["items"]] == [
        (promise["id"], "kept", "50.00"),
    ]  # fmt: skip


async def test_a_payment_in_time_recorded_after_the_break_resumes_the_plan(
    client: httpx.AsyncClient,
) -> None:
    """The first installment's money came on Feb 19 but was reported after the close of Feb 21
    broke it: the installment was kept, and the plan runs on to its second date."""
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    await close(w, "2026-02-21")
    assert states(await plan(w, made["id"])) == [("broken", "0.00"), ("cancelled", "0.00")]
    await w.pay(loan_id, "200.00", "2026-02-19")
    got = await plan(w, made["id"])
    assert got["status"] == "active"
    assert states(got) == [("kept", "200.00"), ("open", "0.00")]
    assert (got["installments"][0]["kept_on"], got["installments"][0]["broken_on"]) == (
        "2026-02-19", None,
    )  # fmt: skip
    assert "broken_promise" not in await flags(w, loan_id)

    await close(w, "2026-03-06")  # the second date passes short: the plan breaks there
    got = await plan(w, made["id"])
    assert states(got) == [("kept", "200.00"), ("broken", "0.00")]
    assert [e["data"]["plan_installment"] for e in await events(w, "promise.broken")] == [1, 2]


async def test_a_back_dated_payoff_completes_the_broken_plan(client: httpx.AsyncClient) -> None:
    """Paid off on Feb 19 but reported after the close of Feb 21: the plan was kept to the
    end, as it reads when the payoff is reported in time (a re-verifier saw `cancelled`)."""
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    await close(w, "2026-02-21")
    await w.pay(loan_id, "1220.00", "2026-02-19")  # the payoff on that date
    assert (await w.get(f"/v1/loans/{loan_id}"))["status"] == "paid_off"
    got = await plan(w, made["id"])
    assert (got["status"], got["paid"]) == ("completed", "412.00")
    assert [(i["status"], i["kept_on"]) for i in got["installments"]] == [
        ("kept", "2026-02-19"), ("kept", "2026-02-19"),
    ]  # fmt: skip


async def test_a_plan_mended_after_a_newer_promise_stays_ended(
    client: httpx.AsyncClient,
) -> None:
    """Once a promise was taken after the broken plan, the plan's rest is not revived beside
    it: the installment reads kept, the plan cancelled."""
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    await close(w, "2026-02-21")
    body = {"amount": "100.00", "due_on": "2026-02-28"}
    await w.post(f"/v1/loans/{loan_id}/promises", body, expect=201)
    await w.pay(loan_id, "200.00", "2026-02-19")
    got = await plan(w, made["id"])
    assert got["status"] == "cancelled"
    assert states(got) == [("kept", "200.00"), ("cancelled", "0.00")]
    (taken,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (taken["status"], taken["paid"]) == ("open", "0.00")  # Feb 19 is before its window


async def test_money_after_an_installments_date_is_no_part_of_it(
    client: httpx.AsyncClient,
) -> None:
    """Paid after the first date (recorded before that night's close): the first installment
    shows nothing paid, as its promise.broken says, and the money shows on the second."""
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    await w.pay(loan_id, "150.00", "2026-02-25")
    assert states(await plan(w, made["id"])) == [("open", "0.00"), ("open", "150.00")]
    await close(w, "2026-02-21")
    got = await plan(w, made["id"])
    assert states(got) == [("broken", "0.00"), ("cancelled", "150.00")]
    assert got["paid"] == "150.00"
    (event,) = await events(w, "promise.broken")
    assert (event["data"]["paid"], event["data"]["shortfall"]) == ("0.00", "200.00")


async def test_narrowly_kept(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    await w.pay(loan_id, "199.99", "2026-02-17")
    await w.pay(loan_id, "0.01", "2026-02-20")
    await close(w, "2026-02-21")
    assert states(await plan(w, made["id"])) == [("kept", "200.00"), ("open", "0.00")]
    assert await events(w, "promise.broken") == []


async def test_a_reversal_breaks_an_installment_whose_date_passed(
    client: httpx.AsyncClient,
) -> None:
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))
    payment = await w.pay(loan_id, "200.00", "2026-02-18")
    await close(w, "2026-02-22")
    assert states(await plan(w, made["id"])) == [("kept", "200.00"), ("open", "0.00")]
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    got = await plan(w, made["id"])
    assert states(got) == [("broken", "0.00"), ("cancelled", "0.00")]
    # At once, dated the next date to close: the bounce is today's, after the business date.
    assert got["installments"][0]["broken_on"] == "2026-02-23"
    (event,) = await events(w, "promise.broken")
    assert (event["data"]["restructure_id"], event["data"]["plan_installment"]) == (made["id"], 1)
    assert "broken_promise" in await flags(w, loan_id)


async def test_a_newer_plan_replaces_the_running_one(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    first = await approve(w, await request(w, loan_id))
    await w.pay(loan_id, "200.00", "2026-02-16")
    second = await request(w, loan_id, [{"due_on": "2026-03-01", "amount": "300.00"}])
    second = await approve(w, second)
    # The 200.00 kept the first plan's installment: it counts toward no other promise.
    assert states(second["plan"]) == [("open", "0.00")]
    got = await plan(w, first["id"])
    assert got["status"] == "cancelled"
    assert states(got) == [("kept", "200.00"), ("cancelled", "0.00")]
    await close(w, "2026-03-06")  # the first plan's second date passes: nothing breaks
    assert [e["data"]["restructure_id"] for e in await events(w, "promise.broken")] == [
        second["id"]
    ]


async def test_a_plan_replaces_an_open_promise(client: httpx.AsyncClient) -> None:
    """A promise taken before the plan would count the money first and break the plan on its
    first date although the borrower paid in time (a black-box tester's)."""
    w, loan_id = await setup(client)
    promised = {"amount": "100.00", "due_on": "2026-02-25"}
    taken = (await w.post(f"/v1/loans/{loan_id}/promises", promised, expect=201)).json()
    approved = await approve(w, await request(w, loan_id))
    (promise,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (promise["id"], promise["status"], promise["cancelled_on"]) == (
        taken["id"], "cancelled", "2026-02-15",
    )  # fmt: skip
    await w.pay(loan_id, "200.00", "2026-02-18")
    await close(w, "2026-02-26")  # past both dates
    assert states(await plan(w, approved["id"])) == [("kept", "200.00"), ("open", "0.00")]
    assert await events(w, "promise.broken") == []


async def test_a_replaced_promise_releases_its_money_to_the_plan(
    client: httpx.AsyncClient,
) -> None:
    """Paid 200.00 toward a 300.00 promise on the plan's first day: cancelled, the promise
    keeps nothing, and the plan's first installment is kept by that money (a re-verifier's:
    the cancelled promise kept it counted, and the plan would have broken)."""
    w, loan_id = await setup(client)
    promised = {"amount": "300.00", "due_on": "2026-02-25"}
    await w.post(f"/v1/loans/{loan_id}/promises", promised, expect=201)
    await w.pay(loan_id, "200.00", "2026-02-15")
    (promise,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (promise["status"], promise["paid"]) == ("open", "200.00")
    approved = await approve(w, await request(w, loan_id))
    (promise,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (promise["status"], promise["paid"]) == ("cancelled", "0.00")
    assert states(approved["plan"]) == [("kept", "200.00"), ("open", "0.00")]


async def test_a_cancelled_loan_ends_its_plan_at_once(client: httpx.AsyncClient) -> None:
    """Goods returned: nothing is owed, so the plan's open installments are cancelled with
    the loan, not left open until the next close."""
    w, loan_id = await setup(client)
    approved = await approve(w, await request(w, loan_id))
    await w.pay(loan_id, "200.00", "2026-02-16")
    await w.post(f"/v1/loans/{loan_id}/cancel", {"reason": "goods returned"}, expect=200)
    got = await plan(w, approved["id"])
    assert (got["status"], states(got)) == (
        "cancelled",
        [("kept", "200.00"), ("cancelled", "0.00")],
    )
    await close(w, "2026-03-06")  # the second date passes: nothing breaks
    assert await events(w, "promise.broken") == []


async def test_a_plan_and_a_promise_side_by_side(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    await approve(w, await request(w, loan_id))
    body = {"amount": "50.00", "due_on": "2026-02-25"}
    promise = (await w.post(f"/v1/loans/{loan_id}/promises", body, expect=201)).json()
    assert [p["id"] for p in (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]] == [
        promise["id"]
    ]


async def test_a_plan_and_a_promise_count_different_money(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await approve(w, await request(w, loan_id))  # 200.00 by Feb 20, 412.00 by Mar 5
    body = {"amount": "50.00", "due_on": "2026-02-25"}
    promise = (await w.post(f"/v1/loans/{loan_id}/promises", body, expect=201)).json()
    await w.pay(loan_id, "450.00", "2026-02-16")  # the plan, approved first, counts first
    got = await plan(w, made["id"])
    assert (got["status"], got["paid"]) == ("completed", "412.00")
    (taken,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (taken["id"], taken["status"], taken["paid"]) == (promise["id"], "open", "38.00")
    await w.pay(loan_id, "12.00", "2026-02-17")
    (taken,) = (await w.get(f"/v1/loans/{loan_id}/promises"))["items"]
    assert (taken["status"], taken["paid"], taken["kept_on"]) == ("kept", "50.00", "2026-02-17")
    assert (await plan(w, made["id"]))["paid"] == "412.00"


async def test_partial_payments_rests_while_a_plan_runs(client: httpx.AsyncClient) -> None:
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3)  # fmt: skip
    await close(w, "2026-01-10")
    # 1200.00 over 6 months: 212.00, 210.00, ... due on the 10th from February.
    loan_id = str((await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10"))["id"])
    await w.pay(loan_id, "100.00", "2026-02-11")  # under 80 % of 212.00, within grace
    await w.pay(loan_id, "100.00", "2026-03-12")  # under 80 % of 210.00
    await close(w, "2026-03-14")
    assert "partial_payments" in await flags(w, loan_id)

    pending = await request(w, loan_id, [{"due_on": "2026-03-20", "amount": "100.00"},
                                         {"due_on": "2026-04-10", "amount": "100.00"}])  # fmt: skip
    assert "partial_payments" in await flags(w, loan_id)  # a request is not an agreement
    await approve(w, pending)
    assert "partial_payments" not in await flags(w, loan_id)  # at once
    cleared = (await flags(w, loan_id, "cleared"))["partial_payments"]
    assert cleared["cleared_on"] == "2026-03-14"
    await close(w, "2026-03-20")
    assert "partial_payments" not in await flags(w, loan_id)
    await close(w, "2026-03-21")  # nothing paid by Mar 20: the plan breaks, the rest returns
    now = await flags(w, loan_id)
    assert {"partial_payments", "broken_promise"} <= set(now)
    assert now["partial_payments"]["raised_on"] == "2026-03-21"


async def test_a_completed_plan_has_settled_the_partial_periods_before_it(
    client: httpx.AsyncClient,
) -> None:
    """The day a plan was completed, partial_payments came back for the very periods the plan
    had been agreed to settle (a tester's): a fresh medium flag on a borrower who had kept
    every promise."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3)  # fmt: skip
    await close(w, "2026-01-10")
    loan_id = str((await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10"))["id"])
    await w.pay(loan_id, "100.00", "2026-02-11")  # under 80 % of 212.00
    await w.pay(loan_id, "100.00", "2026-03-12")  # under 80 % of 210.00
    await close(w, "2026-03-14")
    assert "partial_payments" in await flags(w, loan_id)
    agreed = await request(w, loan_id, [{"due_on": "2026-03-20", "amount": "100.00"},
                                        {"due_on": "2026-04-05", "amount": "100.00"}])  # fmt: skip
    await approve(w, agreed)
    await w.pay(loan_id, "100.00", "2026-03-20")
    await close(w, "2026-03-20")
    await w.pay(loan_id, "100.00", "2026-04-05")
    assert (await plan(w, agreed["id"]))["status"] == "completed"
    for day in ("2026-04-05", "2026-04-06"):
        await close(w, day)
        assert "partial_payments" not in await flags(w, loan_id), day
    raised = await events(w, "risk.flag_raised")
    assert [e["data"]["code"] for e in raised].count("partial_payments") == 1


async def test_an_expired_request_is_refused_then_rejected(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await request(w, loan_id)
    # The first installment's date is closed: its close has judged it.
    await close(w, "2026-02-20")
    before = await stored()
    refused = await w.post(f"/v1/restructures/{made['id']}/approve", {}, w.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "restructure_expired")
    assert refused.headers["content-type"] == "application/problem+json"
    assert await stored() == before
    path = f"/v1/loans/{loan_id}/restructures/{made['id']}/reject"
    rejected = (await w.post(path, {"note": "dates passed"}, w.admin, 200)).json()
    assert (rejected["status"], rejected["decided_on"], rejected["decision_note"]) == (
        "rejected", "2026-02-20", "dates passed",
    )  # fmt: skip
    assert rejected["plan"]["status"] == "rejected"
    assert await events(w, "restructure.approved") == []


async def test_roles_and_other_merchants(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await request(w, loan_id)
    other = await world(client)
    body = {"kind": "repayment_plan", "reason": "x", "installments": PLAN}
    refused = await client.post(f"/v1/loans/{loan_id}/restructures", json=body,
                                headers=other.merchant)  # fmt: skip
    assert (refused.status_code, refused.json()["code"]) == (404, "loan_not_found")
    hidden = await client.get(f"/v1/restructures/{made['id']}", headers=other.merchant)
    assert (hidden.status_code, hidden.json()["code"]) == (404, "restructure_not_found")
    listed = await client.get(f"/v1/loans/{loan_id}/restructures", headers=other.merchant)
    assert listed.status_code == 404
    other_loan = (await other.loan())["id"]
    astray = await client.get(f"/v1/loans/{other_loan}/restructures/{made['id']}",
                              headers=w.admin)  # fmt: skip
    assert (astray.status_code, astray.json()["code"]) == (404, "restructure_not_found")
    missing = await w.post("/v1/restructures/rst_nope/approve", {}, w.admin)
    assert (missing.status_code, missing.json()["code"]) == (404, "restructure_not_found")

    dashboard = auth(await api_key(Role.DASHBOARD))
    assert (await w.post(f"/v1/loans/{loan_id}/restructures", body, dashboard)).status_code == 403
    assert (await client.get(f"/v1/restructures/{made['id']}", headers=dashboard)).is_success
    for role in (Role.DASHBOARD, Role.GATEWAY):
        key = auth(await api_key(role))
        assert (await w.post(f"/v1/restructures/{made['id']}/approve", {}, key)).status_code == 403
    admin_made = await w.post(f"/v1/loans/{loan_id}/restructures", body, w.admin)
    assert admin_made.status_code == 201
    # No body at all is an approval without a note.
    approved = await client.post(f"/v1/restructures/{made['id']}/approve", headers=w.admin)
    assert (approved.status_code, approved.json()["decision_note"]) == (200, None)


async def test_pages_of_restructures(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    first, second = await request(w, loan_id), await request(w, loan_id)
    page = await w.get(f"/v1/loans/{loan_id}/restructures?limit=1")
    assert [r["id"] for r in page["items"]] == [first["id"]]
    rest = await w.get(f"/v1/loans/{loan_id}/restructures?limit=1&cursor={page['next_cursor']}")
    assert [r["id"] for r in rest["items"]] == [second["id"]]
    assert rest["next_cursor"] is None


async def test_no_plan_on_a_paid_off_loan(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    pending = await request(w, loan_id)
    payoff = (await w.get(f"/v1/loans/{loan_id}"))["balances"]["payoff_amount"]
    await w.pay(loan_id, payoff)
    before = await stored()
    body = {"kind": "repayment_plan", "reason": "x", "installments": PLAN}
    refused = await w.post(f"/v1/loans/{loan_id}/restructures", body)
    assert (refused.status_code, refused.json()["code"]) == (409, "loan_not_active")
    late = await w.post(f"/v1/restructures/{pending['id']}/approve", {}, w.admin)
    assert (late.status_code, late.json()["code"]) == (409, "loan_not_active")
    assert await stored() == before


async def test_a_plan_the_loan_was_paid_down_below_is_a_conflict(
    client: httpx.AsyncClient,
) -> None:
    """Asked for the whole payoff (1220.00), then 100.00 paid: the approval's body is not at
    fault, the loan moved (a tester saw 422 naming `installments`, a field it has not)."""
    w, loan_id = await setup(client)
    pending = await request(w, loan_id, [PLAN[0], {"due_on": "2026-03-05", "amount": "1020.00"}])
    await w.pay(loan_id, "100.00")
    before = await stored()
    refused = await w.post(f"/v1/restructures/{pending['id']}/approve", {}, w.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "plan_exceeds_payoff")
    assert "1220.00, more than the loan's payoff amount 1120.00" in refused.json()["detail"]
    assert await stored() == before
    got = await w.get(f"/v1/restructures/{pending['id']}")
    assert (got["status"], got["plan"]["status"]) == ("pending", "proposed")


TWENTY_FIVE = [{"due_on": f"2026-03-{d:02d}", "amount": "1.00"} for d in range(1, 26)]
BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("a term extension with a plan's fields", {"kind": "term_extension"}, "installments"),
    ("an unknown kind", {"kind": "forgiveness"}, "kind"),
    ("no reason", {"reason": None}, "reason"),
    ("an empty reason", {"reason": ""}, "reason"),
    ("no installments", {"installments": None}, "installments"),
    ("an empty plan", {"installments": []}, "installments"),
    ("25 installments", {"installments": TWENTY_FIVE}, "installments"),
    ("amount as a JSON number",
     {"installments": [{"due_on": "2026-02-20", "amount": 200.0}]}, "installments.0.amount"),
    ("zero amount",
     {"installments": [{"due_on": "2026-02-20", "amount": "0.00"}]}, "installments.0.amount"),
    ("three decimals for CNY",
     {"installments": [{"due_on": "2026-02-20", "amount": "1.001"}]}, "installments.0.amount"),
    ("dates out of order",
     {"installments": [PLAN[1], PLAN[0]]}, "installments.1.due_on"),
    ("the same date twice",
     {"installments": [PLAN[0], PLAN[0]]}, "installments.1.due_on"),
    ("due before the business date",
     {"installments": [{"due_on": "2026-02-14", "amount": "1.00"}]}, "installments.0.due_on"),
    ("due on the business date, closed",
     {"installments": [{"due_on": "2026-02-15", "amount": "1.00"}]}, "installments.0.due_on"),
    ("due beyond a year",
     {"installments": [PLAN[0], {"due_on": "2027-02-17", "amount": "1.00"}]},
     "installments.1.due_on"),
    ("more than the payoff",
     {"installments": [PLAN[0], {"due_on": "2026-03-05", "amount": "1020.01"}]},
     "installments"),
    ("an unknown field in an installment",
     {"installments": [{**PLAN[0], "note": "x"}]}, "installments.0.note"),
    ("an unknown field", {"extra_months": 3}, "extra_months"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "override", "field"), BAD_REQUESTS,
                         ids=[c[0] for c in BAD_REQUESTS])  # fmt: skip
async def test_malformed_requests_are_refused(
    client: httpx.AsyncClient, case: str, override: dict[str, Any], field: str
) -> None:
    w, loan_id = await setup(client)
    before = await stored()
    body = {k: v for k, v in {"kind": "repayment_plan", "reason": "r", "installments": PLAN,
                              **override}.items() if v is not None}  # fmt: skip
    response = await w.post(f"/v1/loans/{loan_id}/restructures", body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == [field], problem
    if case == "more than the payoff":
        assert problem["code"] == "amount_exceeds_payoff"
        assert "1220.00" in problem["detail"]
    assert await stored() == before


async def test_the_whole_payoff_and_a_year_ahead_are_accepted(client: httpx.AsyncClient) -> None:
    w, loan_id = await setup(client)
    made = await request(w, loan_id, [PLAN[0], {"due_on": "2027-02-16", "amount": "1020.00"}])
    assert made["plan"]["total"] == "1220.00"


async def test_concurrent_decisions_one_wins(client: httpx.AsyncClient) -> None:
    """Approvals and rejections of one restructure racing each other, with a payment on the
    loan between them: one decision lands, the others are 409, one event, one set of plan
    installments."""
    w, loan_id = await setup(client)
    made = await request(w, loan_id)
    path = f"/v1/restructures/{made['id']}"
    responses = await asyncio.gather(
        *[w.post(f"{path}/approve", {}, w.admin) for _ in range(3)],
        *[w.post(f"{path}/reject", {}, w.admin) for _ in range(2)],
        w.post(f"/v1/loans/{loan_id}/payments", {"amount": "50.00", "received_on": "2026-02-15"}),
    )
    decisions = sorted(r.status_code for r in responses[:5])
    assert decisions == [200, 409, 409, 409, 409], [r.text for r in responses]
    assert all(r.json()["code"] == "restructure_not_pending"
               for r in responses[:5] if r.status_code == 409)  # fmt: skip
    assert responses[5].status_code == 201
    final = await w.get(path)
    approvals = await events(w, "restructure.approved")
    if final["status"] == "approved":
        assert len(approvals) == 1
        assert states(final["plan"]) == [("open", "50.00"), ("open", "0.00")]
    else:
        assert (final["status"], approvals) == ("rejected", [])
    async with session_scope() as session:
        carried = await session.scalar(
            select(func.count()).where(Promise.restructure_id == made["id"])
        )
    assert carried == (2 if final["status"] == "approved" else 0)
