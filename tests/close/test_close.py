"""The nightly close over HTTP: fees, delinquency, reminders, idempotency, catch-up, crashes."""

import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from app import clock
from app.close import service as close_service
from app.close.models import CloseRun, CloseStatus, FeeReplayDue
from app.config import get_settings
from app.db import session_scope
from app.events.models import Event
from app.ledger.models import LedgerTransaction, TransactionKind
from app.loans.models import Loan, LoanInstallment
from tests.factories import World, world
from tests.payments.test_routes import assert_ledger_invariant


async def close(w: World, as_of: str, expect: int = 201) -> dict[str, Any]:
    response = await w.post("/v1/close-runs", {"as_of": as_of}, headers=w.admin, expect=expect)
    return dict(response.json())


async def event_types(loan_id: str | None = None) -> Counter[str]:
    async with session_scope() as session:
        query = select(Event.type)
        if loan_id:
            query = query.where(Event.loan_id == loan_id)
        return Counter(await session.scalars(query))


async def late_fee_rows() -> int:
    async with session_scope() as session:
        return int(
            await session.scalar(
                select(func.count()).where(LedgerTransaction.kind == "late_fee")
            ) or 0
        )  # fmt: skip


async def assert_a_rerun_adds_nothing(w: World, as_of: str) -> None:
    """A rerun of the date charges no fee and tells no event more."""
    before = (await event_types(), await late_fee_rows())
    await close(w, as_of)
    assert (await event_types(), await late_fee_rows()) == before


async def late_world(client: httpx.AsyncClient) -> tuple[World, dict[str, Any]]:
    """A loan of 1200.00 over 3 months from 2026-01-10 (due Feb 10, Mar 10, Apr 10), with a
    20.00 late fee after 3 days' grace; the business date pinned at disbursement."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await close(w, "2026-01-10")
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    return w, loan


async def test_a_missed_installment_ages_through_the_buckets(client: httpx.AsyncClient) -> None:
    w, loan = await late_world(client)
    run = await close(w, "2026-02-12")  # catches up Jan 11 .. Feb 12
    assert run["status"] == "succeeded"
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"], got["bucket_label"], got["status"]) == (
        2, "1-30", "M1", "delinquent",
    )  # fmt: skip
    assert got["delinquency_as_of"] == "2026-02-12"
    assert got["balances"]["overdue_amount"] == "412.00"
    assert await late_fee_rows() == 0  # two days late: still in grace

    # Feb 13, the last day of grace, ends unpaid: its close charges the fee, so the next
    # morning's quotes include it.
    run = await close(w, "2026-02-13")
    assert (run["counts"]["late_fees_assessed"], run["counts"]["late_fees_minor_CNY"]) == (1, 2000)
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["balances"]["overdue_amount"] == "432.00"
    assert got["balances"]["fees_outstanding"] == "20.00"
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    assert schedule["installments"][0]["fees"] == "20.00"
    assert schedule["installments"][0]["status"] == "overdue"
    assert await late_fee_rows() == 1

    await close(w, "2026-05-12")  # 91 days after Feb 10
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"], got["status"]) == (91, "90+", "defaulted")
    assert await late_fee_rows() == 3  # one per installment, never twice
    types = await event_types(loan["id"])
    # current -> 1-30 -> 31-60 -> 61-90 -> 90+ (status delinquent -> defaulted with it)
    assert types["loan.delinquency_changed"] == 4
    assert types["loan.late_fee_assessed"] == 3
    assert types["installment.due_soon"] == 3

    await close(w, "2026-08-09")  # 180 days: still defaulted; 181: charged off
    assert (await w.get(f"/v1/loans/{loan['id']}"))["status"] == "defaulted"
    await close(w, "2026-08-10")
    assert (await w.get(f"/v1/loans/{loan['id']}"))["status"] == "charged_off"


async def test_a_payment_the_day_after_grace_is_late_and_pays_the_fee(
    client: httpx.AsyncClient,
) -> None:
    """Due Feb 10 with 3 days' grace: paid Feb 14, the first day after it, the installment was
    late, whether the payment reached us before the close of Feb 13, the last day of grace, or
    after it. Before the twenty-seventh session the close of Feb 14 charged the fee, counting
    Feb 14's payments, so a fee came only on day 5 (a tester's: grace 0 let a payment one day
    late go free). Paid Feb 13, in grace, there is no fee, even reported after that close."""
    w, before_close = await late_world(client)
    after_close = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    in_grace = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    await close(w, "2026-02-12")
    await w.pay(before_close["id"], "412.00", "2026-02-14")
    run = await close(w, "2026-02-13")
    assert run["counts"]["late_fees_assessed"] == 3
    await w.pay(after_close["id"], "432.00", "2026-02-14")  # quoted the next morning
    await w.pay(in_grace["id"], "412.00", "2026-02-13")  # reported late: the fee is withdrawn
    assert (await w.get(f"/v1/loans/{before_close['id']}"))["balances"]["overdue_amount"] == (
        "20.00"  # its 412.00, received after the fee's night, paid the fee first
    )
    for loan in (before_close, after_close):
        first = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][0]
        assert (first["fees"], first["status"]) == ("20.00", "paid" if loan is after_close
                                                    else "overdue")  # fmt: skip
    after = await w.get(f"/v1/loans/{after_close['id']}")
    assert (after["balances"]["overdue_amount"], after["days_past_due"]) == ("0.00", 0)
    got = await w.get(f"/v1/loans/{in_grace['id']}")
    assert (got["balances"]["overdue_amount"], got["balances"]["fees_outstanding"]) == (
        "0.00", "0.00",
    )  # fmt: skip
    assert await late_fee_rows() == 3
    assert (await event_types())["loan.late_fee_assessed"] == 3


async def test_a_bounce_months_later_charges_only_what_is_still_unpaid(
    client: httpx.AsyncClient,
) -> None:
    """A payment bounced months later moves every later payment back an installment: the
    installments they now settle were settled after their grace. Closes already judged those
    graces; only what is unpaid now owes a fee. Judged again by their graces, one bounce
    charged each a fee, and each fee, counted missed from its due date, took the loan to 90+
    overnight (a tester's: 8 fees and a charge-off from one 202.15 bounce)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await close(w, "2026-01-10")
    loan = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10")
    paid = [await w.pay(loan["id"], "212.00", f"2026-{month:02}-10") for month in (2, 3, 4, 5)]
    await close(w, "2026-05-20")
    assert await late_fee_rows() == 0

    await w.post(f"/v1/payments/{paid[0]['id']}/reverse", {"reason": "nsf"}, expect=200)
    run = await close(w, "2026-05-21")
    # Installments 1-3 are settled (late, by the later payments); 4 owes 200.00 since May 10.
    assert run["counts"]["late_fees_assessed"] == 1
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"], got["status"]) == (11, "1-30", "delinquent")
    assert got["balances"]["fees_outstanding"] == "20.00"
    schedule = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
    assert [i["fees"] for i in schedule[:4]] == ["0.00", "0.00", "0.00", "20.00"]
    # Its grace was judged settled on May 13: the fee counts from the night that met the
    # bounce, not from that grace, so the payments between keep the allocation closes gave them.
    rows = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [r["effective_on"] for r in rows if r["kind"] == "late_fee"] == ["2026-05-21"]


async def test_a_rerun_after_a_bounce_charges_only_what_is_still_unpaid(
    client: httpx.AsyncClient,
) -> None:
    """The date's earlier run judged a loan booked after the close of the date before: its
    rerun took the date before as the last judge, and charged the bounce's fees (a
    re-verifier's: 5 fees, the loan to 90+)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await close(w, "2026-05-20")
    loan = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10")
    paid = [await w.pay(loan["id"], "212.00", f"2026-{month:02}-10") for month in (2, 3, 4, 5)]
    assert (await close(w, "2026-05-21"))["counts"]["late_fees_assessed"] == 0
    await w.post(f"/v1/payments/{paid[0]['id']}/reverse", {"reason": "nsf"}, expect=200)
    rerun = await close(w, "2026-05-21")
    assert rerun["counts"]["late_fees_assessed"] == 1  # installment 4, unpaid since May 10
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"]) == (11, "1-30")


async def test_an_installment_paid_on_time_but_for_older_fees_is_charged_none(
    client: httpx.AsyncClient,
) -> None:
    """No pyramiding: installment 1 paid after its grace owes its fee; installment 2, paid in
    full on its due date, is left short only because that payment paid the fee first, and is
    charged none, nor is the third; the 20.00 stays owed, on the newest. Before, each later
    installment was charged a fee of its own, every month until the loan ended."""
    w, loan = await late_world(client)  # 412.00, 408.00, 404.00 due Feb 10, Mar 10, Apr 10
    for amount, day in (("412.00", "02-16"), ("408.00", "03-10"), ("404.00", "04-10")):
        await w.pay(loan["id"], amount, f"2026-{day}")
        await close(w, f"2026-{day[:2]}-20")
    assert await late_fee_rows() == 1
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["balances"]["overdue_amount"], got["days_past_due"]) == ("20.00", 10)
    schedule = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
    assert [(i["fees"], i["status"]) for i in schedule] == [
        ("20.00", "paid"), ("0.00", "paid"), ("0.00", "overdue"),
    ]  # fmt: skip
    await assert_ledger_invariant(loan["id"])


async def test_a_first_close_s_percent_fee_counts_what_the_older_fees_left_unpaid(
    client: httpx.AsyncClient,
) -> None:
    """The percent fee of the installment whose grace ends on the first close's date is on
    what that day's payment fell short of the installments due, late fees aside, as nightly
    closes charge it and as the same payment reported after the close leaves it: the older
    fees the payment paid first do not raise it (no pyramiding)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=0, late_fee={"kind": "percent", "percent": "0.05",
                                            "cap_per_installment": "100.00"})  # fmt: skip
    # Due the 13th from Aug: 212.00, 210.00, 208.00, 206.00, ...
    before, after = [await w.loan(principal="1200.00", term=6, disbursed_on="2026-07-13")
                     for _ in range(2)]  # fmt: skip
    await w.pay(before["id"], "700.00", "2026-11-13")
    assert (await close(w, "2026-11-13"))["counts"]["late_fees_assessed"] == 8
    await w.pay(after["id"], "700.00", "2026-11-13")
    # 5 % of 212.00, 210.00, 208.00; and of 136.00, what 700.00 fell short of the 836.00 due
    # (the payment paid the 31.50 of fees first, leaving the fourth 167.50 short).
    for loan in (before, after):
        schedule = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
        assert [i["fees"] for i in schedule[:4]] == ["10.60", "10.50", "10.40", "6.80"]
    got = [await w.get(f"/v1/loans/{loan['id']}") for loan in (before, after)]
    assert got[0]["balances"] == got[1]["balances"]
    rows = (await w.get(f"/v1/loans/{before['id']}/transactions"))["items"]
    assert [r["amount"] for r in rows if r["kind"].startswith("late_fee")] == [
        "10.60", "10.50", "10.40", "6.80",
    ]  # fmt: skip
    await assert_a_rerun_adds_nothing(w, "2026-11-13")


async def test_a_first_close_dates_each_fee_on_its_grace_so_later_payments_pay_it_first(
    client: httpx.AsyncClient,
) -> None:
    """A back-dated book's first close charges the fees of graces long past. Dated on the
    close's own date, a payment between those graces and the close paid the installments and
    not the fees: installments 1 and 2 each owed their fee, missed from their due dates, and a
    loan nightly closes leave 10 days late was 69 (a re-verifier's: 92 days and defaulted).
    Each fee counts from its grace: the payment pays the older fees first, leaving the third
    installment 40.00 short (charged no fee for it: no pyramiding)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    # Due the 10th from Feb: 212.00, 210.00, 208.00, then 206.00 ...
    loan = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10")
    paid = await w.pay(loan["id"], "630.00", "2026-04-11")  # the three, not a fee
    assert (await close(w, "2026-04-20"))["counts"]["late_fees_assessed"] == 2
    rows = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [(r["installment_seq"], r["effective_on"]) for r in rows if r["kind"] == "late_fee"] == [
        (1, "2026-02-13"), (2, "2026-03-13"),
    ]  # fmt: skip
    # 630.00 paid 20.00 + 212.00, 20.00 + 210.00, then 168.00 of the third: 40.00 short.
    got = await w.get(f"/v1/payments/{paid['id']}")
    assert [(a["installment_seq"], a["fees"]) for a in got["allocation"]] == [
        (1, "20.00"), (2, "20.00"), (3, "0.00"),
    ]  # fmt: skip
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"]) == (10, "1-30")
    assert (got["balances"]["overdue_amount"], got["balances"]["fees_outstanding"]) == (
        "40.00", "0.00",
    )  # fmt: skip
    fees = (await w.get("/v1/events?type=loan.late_fee_assessed", headers=w.admin))["items"]
    assert [(e["data"]["as_of"], e["data"]["effective_on"]) for e in fees] == [
        ("2026-04-20", "2026-02-13"), ("2026-04-20", "2026-03-13"),
    ]  # fmt: skip
    await assert_ledger_invariant(loan["id"])
    await assert_a_rerun_adds_nothing(w, "2026-04-20")


async def test_a_book_brought_in_paid_late_each_month_is_late_from_its_newest_shortfall(
    client: httpx.AsyncClient,
) -> None:
    """Each installment paid in full 5 days after its due date, past its 3 days' grace. Nightly
    closes charge each a fee that the next payment pays first, so the shortfall moves to the
    newest installment: 10 days past due. Charged on the first close's date, the four fees
    stayed unpaid on installments paid long ago, missed from the first due date: 99 days."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    loan = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10")
    for amount, day in (("212.00", "02-15"), ("210.00", "03-15"), ("208.00", "04-15"),
                        ("206.00", "05-15")):  # fmt: skip
        await w.pay(loan["id"], amount, f"2026-{day}")
    assert (await close(w, "2026-05-20"))["counts"]["late_fees_assessed"] == 4
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"]) == (10, "1-30")
    # Each payment paid the shortfall before it, then its installment's fee: 80.00 short.
    assert (got["balances"]["overdue_amount"], got["balances"]["fees_outstanding"]) == (
        "80.00", "0.00",
    )  # fmt: skip
    schedule = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
    assert [i["status"] for i in schedule[:4]] == ["paid", "paid", "paid", "overdue"]
    await assert_ledger_invariant(loan["id"])


async def test_a_loan_booked_back_dated_is_charged_as_nightly_closes_charge_its_twin(
    client: httpx.AsyncClient,
) -> None:
    """Twin loans with the same payments, between their graces: A met every night's close
    (a catch-up closes each date by the payments received by it), B was booked back-dated
    after those closes, so the next one charges all its fees at once, on their graces' nights.
    B's percent fees, each on what the payments fell short of the installments due by its
    grace, and its balances come out as A's, the payments paying the older fees first."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=0, late_fee={"kind": "percent", "percent": "0.05",
                                            "cap_per_installment": "100.00"})  # fmt: skip
    await close(w, "2026-01-10")
    history = [("300.00", "2026-02-20"), ("150.00", "2026-03-25"), ("100.00", "2026-04-12")]
    a = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10")
    for amount, day in history:
        await w.pay(a["id"], amount, day)
    await close(w, "2026-04-30")
    b = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-10")
    for amount, day in history:
        await w.pay(b["id"], amount, day)
    assert (await close(w, "2026-05-01"))["counts"]["late_fees_assessed"] == 3

    schedules = [(await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
                 for loan in (a, b)]  # fmt: skip
    # 5 % of 212.00; of 122.00, what 300.00 fell short of 422.00; of 180.00, what 450.00 fell
    # short of 630.00 (100.00 came after its grace).
    assert [i["fees"] for i in schedules[0][:4]] == ["10.60", "6.10", "9.00", "0.00"]
    assert schedules[0] == schedules[1]
    got = [await w.get(f"/v1/loans/{loan['id']}") for loan in (a, b)]
    assert got[0]["balances"] == got[1]["balances"]
    assert [(g["days_past_due"], g["status"]) for g in got] == [(21, "delinquent")] * 2
    for loan in (a, b):
        await assert_ledger_invariant(loan["id"])


async def twins(
    w: World, history: list[tuple[str, str]], first_close: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two loans of 1200.00 over 6 months from 2026-01-15 (200.00 due the 15th from Feb) with
    the same payments: A met every night's close, B was booked back-dated after them, and
    ``first_close`` (the next date) charges all its fees at once, on their graces' nights."""
    await close(w, "2026-01-15")
    a = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-15")
    for amount, day in history:
        await w.pay(a["id"], amount, day)
    await close(w, str(date.fromisoformat(first_close) - timedelta(days=1)))
    b = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-15")
    for amount, day in history:
        await w.pay(b["id"], amount, day)
    await close(w, first_close)
    return a, b


async def test_a_loan_booked_back_dated_went_past_30_days_when_its_twin_did(
    client: httpx.AsyncClient,
) -> None:
    """Each installment paid in full 5 days late, past its 3 days' grace: each payment pays the
    fee and the shortfall before it first, so the first installment, short its fee's 20.00,
    was settled only on Mar 20, 33 days after its due date. Nightly closes saw the loan past
    30 days on Mar 18; the first close of the twin booked back-dated, which finds it 5 days
    past due, had left it never 30+ (a tester's: vintage curves of a migrated book at 0)."""
    w = await world(client, amortization="interest_free", annual_interest_rate="0",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    history = [("200.00", f"2026-{month:02}-20") for month in range(2, 6)]
    a, b = await twins(w, history, "2026-05-20")
    async with session_scope() as session:
        ever = dict((await session.execute(select(Loan.id, Loan.ever_30_plus_on))).all())
    assert ever[a["id"]] == ever[b["id"]] == date(2026, 3, 18)
    got = [await w.get(f"/v1/loans/{loan['id']}") for loan in (a, b)]
    assert [(g["days_past_due"], g["balances"]["overdue_amount"]) for g in got] == [
        (5, "80.00"), (5, "80.00"),
    ]  # fmt: skip
    vintage = (await w.get("/v1/portfolio/vintages", w.admin))["vintages"][0]
    assert (vintage["origination_month"], vintage["loans"]) == ("2026-01", 2)
    # Both went 30+ in their third month on book (Mar 15 to Apr 14).
    assert [p["ever_30_plus_rate"] for p in vintage["curve"]][:3] == ["0.0000", "0.0000", "1.0000"]


async def test_a_loan_booked_back_dated_relapses_where_its_twin_did(
    client: httpx.AsyncClient,
) -> None:
    """The second installment paid 10 days late: its 20.00 fee, paid first, leaves each later
    installment 20.00 short until the next payment, so the loan is cured on each due date
    and past due again the day after: the relapse of Jun 16, a day after the cure of Jun 15,
    raises `cure_relapse` on both twins (the twin booked back-dated had it only at its next
    payment, a tester's)."""
    w = await world(client, amortization="interest_free", annual_interest_rate="0",
                    grace_days=5, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    history = [("200.00", "2026-02-15"), ("200.00", "2026-03-25"), ("200.00", "2026-04-15"),
               ("200.00", "2026-05-15"), ("200.00", "2026-06-15")]  # fmt: skip
    a, b = await twins(w, history, "2026-06-20")
    relapses = []
    for loan in (a, b):
        page = await w.get(f"/v1/risk/flags?loan_id={loan['id']}&status=open", headers=w.admin)
        flag = {f["code"]: f for f in page["items"]}["cure_relapse"]
        relapses.append((flag["evidence"]["cured_on"], flag["evidence"]["relapsed_on"]))
    assert relapses == [("2026-06-15", "2026-06-16")] * 2


async def test_a_book_s_first_close_of_an_earlier_date_reads_spells_with_the_fees_paid_first(
    client: httpx.AsyncClient,
) -> None:
    """A book brought in before any close, its first close for a date before the booking: its
    loans are reckoned as of the booking, which had read their spells from payments that paid
    no fee. Relapsed, the first loan is cured on each due date and short again the day after
    (the twins above); the second, paid 7 days late each month past its 5 days' grace, was
    never cured once its fees are paid first, where the booking's history had it cured on May
    22 and relapsed on Jun 16 (a re-verifier's: `cure_relapse` missing on one, raised on the
    other). The same holds for a loan the close opens again, paid off by its history (a
    re-verifier's: no flags at all)."""
    w = await world(client, amortization="interest_free", annual_interest_rate="0",
                    grace_days=5, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    relapsed, paid_off, never_cured = [
        await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-15") for _ in range(3)
    ]
    for day in ("02-15", "03-25", "04-15", "05-15", "06-15"):
        await w.pay(relapsed["id"], "200.00", f"2026-{day}")
        # The same, its last payment the payoff: open again once the fee is paid first.
        await w.pay(paid_off["id"], "400.00" if day == "06-15" else "200.00", f"2026-{day}")
    for month in range(2, 6):
        await w.pay(never_cured["id"], "200.00", f"2026-{month:02}-22")
    assert (await w.get(f"/v1/loans/{paid_off['id']}"))["status"] == "paid_off"
    run = await close(w, "2026-07-20")
    flags = []
    for loan in (relapsed, paid_off, never_cured):
        page = await w.get(f"/v1/risk/flags?loan_id={loan['id']}&status=open", headers=w.admin)
        flags.append({f["code"]: f["evidence"] for f in page["items"]})
    spells = [(f["cure_relapse"]["cured_on"], f["cure_relapse"]["relapsed_on"]) for f in flags[:2]]
    # The payoff paid installment 5 in full and the last one all but its 20.00.
    assert spells == [("2026-06-15", "2026-06-16"), ("2026-06-15", "2026-07-16")]
    assert "cure_relapse" not in flags[2]
    # The reopening is one of the close's delinquency changes (a re-verifier's: counted 0).
    assert (await w.get(f"/v1/loans/{paid_off['id']}"))["status"] == "delinquent"
    async with session_scope() as session:
        told = await session.scalar(
            select(func.count()).where(Event.type == "loan.delinquency_changed",
                                       Event.data["as_of"].as_string() == "2026-07-20")
        )  # fmt: skip
    assert run["counts"]["delinquency_changes"] == told


async def test_a_loan_booked_back_dated_and_paid_off_owes_the_fees_its_twin_owes(
    client: httpx.AsyncClient,
) -> None:
    """Each installment paid 10 days late, past its 3 days' grace. Twin A met each night's
    close: each fee, charged on its grace's night, is paid first by the next payment, and the
    last leaves the loan 60.00 short. Twin B, booked back-dated with the same payments, was
    paid off by them before any close met it, and the close charged a paid-off loan nothing:
    one order of recording left 0.00 owed, the other 60.00 (a tester's). Its first close
    charges the three fees on their nights; the payments pay them first, and the loan is open
    again, told from `paid_off` after the fees."""
    w = await world(client, amortization="interest_free", annual_interest_rate="0",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await close(w, "2026-01-15")
    history = [("200.00", date(2026, month, 25)) for month in (2, 3, 4)]
    a = await w.loan(principal="600.00", term=3, disbursed_on="2026-01-15")
    for amount, day in history:
        await close(w, str(day - timedelta(days=1)))
        await w.pay(a["id"], amount, day)
    await close(w, "2026-04-30")
    b = await w.loan(principal="600.00", term=3, disbursed_on="2026-01-15")
    for amount, day in history:
        await w.pay(b["id"], amount, day)
    assert (await w.get(f"/v1/loans/{b['id']}"))["status"] == "paid_off"
    assert (await close(w, "2026-05-01"))["counts"]["late_fees_assessed"] == 3

    got = [await w.get(f"/v1/loans/{loan['id']}") for loan in (a, b)]
    assert [(g["status"], g["days_past_due"], g["paid_off_on"]) for g in got] == [
        ("delinquent", 16, None), ("delinquent", 16, None),
    ]  # fmt: skip
    assert got[0]["balances"] == got[1]["balances"]
    assert got[1]["balances"]["overdue_amount"] == "60.00"
    schedules = [(await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
                 for loan in (a, b)]  # fmt: skip
    assert schedules[0] == schedules[1]
    async with session_scope() as session:
        told = (await session.execute(select(Event.type, Event.data).where(
            Event.loan_id == b["id"]).order_by(Event.position))).all()  # fmt: skip
    moves = [(kind, data.get("previous_status"), data.get("status"))
             for kind, data in told if kind.startswith("loan.")]  # fmt: skip
    assert moves[-5:] == [
        ("loan.paid_off", None, "paid_off"),
        *[("loan.late_fee_assessed", None, None)] * 3,
        ("loan.delinquency_changed", "paid_off", "delinquent"),
    ]
    for loan in (a, b):
        await assert_ledger_invariant(loan["id"])
    await assert_a_rerun_adds_nothing(w, "2026-05-01")


async def test_a_payoff_recorded_while_the_closes_are_behind_owes_the_fee_of_its_grace(
    client: httpx.AsyncClient,
) -> None:
    """The first installment's grace ends Feb 18; the closes stop at Feb 17, and a payment of
    the whole 600.00 on Feb 25 pays the loan off before the close of Feb 18 runs. Closed on
    time, that close charges the fee, and the same payment pays it first, leaving 20.00 owed;
    the catch-up charged a paid-off loan nothing (a re-verifier's, until the forty-third
    session a known limit). Now it charges the fee on its night and the loan is open again."""
    w = await world(client, amortization="interest_free", annual_interest_rate="0",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await close(w, "2026-01-15")
    behind, on_time = [await w.loan(principal="600.00", term=3, disbursed_on="2026-01-15")
                       for _ in range(2)]  # fmt: skip
    await close(w, "2026-02-17")
    await w.pay(behind["id"], "600.00", "2026-02-25")
    assert (await w.get(f"/v1/loans/{behind['id']}"))["status"] == "paid_off"
    await close(w, "2026-02-24")
    await w.pay(on_time["id"], "600.00", "2026-02-25")  # after the fee: it pays it first
    await close(w, "2026-02-28")
    got = [await w.get(f"/v1/loans/{loan['id']}") for loan in (on_time, behind)]
    assert got[0]["balances"] == got[1]["balances"]
    assert [(g["status"], g["balances"]["fees_outstanding"]) for g in got] == [
        ("active", "0.00"), ("active", "0.00"),
    ]  # fmt: skip
    await assert_ledger_invariant(behind["id"])


async def test_a_loan_open_again_owes_the_fees_of_installments_its_payoff_had_settled(
    client: httpx.AsyncClient,
) -> None:
    """Installment 1 of 6 paid 10 days late, installment 2 on time, then the payoff quoted for
    Apr 10 before any fee was charged, which forgives the interest of the periods after the
    third. Paid first, the fee leaves the loan short, and open again it owes that interest:
    the last installment, which the payoff had settled, falls short by its grace and owes its
    fee, as the twin that met each night's close does (a re-verifier's: that fee missing, then
    charged by a rerun, dated on the rerun's date)."""
    w = await world(client, amortization="equal_installment", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await close(w, "2026-01-15")
    terms = {"principal": "1200.00", "term": 6, "disbursed_on": "2026-01-15"}
    probe, a = [await w.loan(**terms) for _ in range(2)]
    level = (await w.get(f"/v1/loans/{probe['id']}/schedule"))["installments"][0]["total"]
    for loan in (probe, a):
        await w.pay(loan["id"], level, "2026-02-25")
        await w.pay(loan["id"], level, "2026-03-15")
    too_much = {"amount": "99999.00", "received_on": "2026-04-10"}
    refused = await w.post(f"/v1/loans/{probe['id']}/payments", too_much, expect=422)
    quote = re.search(r"payoff amount ([0-9.]+)", refused.json()["detail"])
    assert quote is not None
    history = [(level, "2026-02-25"), (level, "2026-03-15"), (quote.group(1), "2026-04-10")]
    await w.pay(a["id"], *history[2])
    await close(w, "2026-07-30")  # a catch-up: each date closed by the payments received by it
    b = await w.loan(**terms)
    for amount, day in history:
        await w.pay(b["id"], amount, day)
    assert (await w.get(f"/v1/loans/{b['id']}"))["status"] == "paid_off"
    await close(w, "2026-07-31")
    fees = [[i["fees"] for i in (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]]
            for loan in (a, b)]  # fmt: skip
    assert fees[0] == fees[1]
    assert (fees[1][0], fees[1][-1]) == ("20.00", "20.00")
    got = [await w.get(f"/v1/loans/{loan['id']}") for loan in (a, b)]
    assert got[0]["balances"] == got[1]["balances"]
    await assert_a_rerun_adds_nothing(w, "2026-07-31")


async def test_fees_an_older_release_pyramided_are_withdrawn_by_the_next_close(
    client: httpx.AsyncClient,
) -> None:
    """An older release charged an installment paid in full and on time a fee when its payment
    paid an older installment's fee first (pyramiding). Until something replayed the loan, its
    payoff quote counted that fee and a payment of it was refused as more than the payoff the
    replay found (a tester's, upgrading). Migration 0043 lists such loans; the next close
    replays each once, withdrawing the fee (a ledger row on its night, and its event)."""
    w, loan = await late_world(client)  # 412.00, 408.00, 404.00 due Feb 10, Mar 10, Apr 10
    await w.pay(loan["id"], "412.00", "2026-02-16")
    await close(w, "2026-02-20")
    await w.pay(loan["id"], "408.00", "2026-03-10")
    await close(w, "2026-03-20")
    # As the older release left it: installment 2 charged a fee too, and the loan listed.
    async with session_scope() as session:
        await session.execute(
            update(LoanInstallment)
            .where(LoanInstallment.loan_id == loan["id"], LoanInstallment.seq == 2)
            .values(late_fees_minor=2000, late_fee_assessed_on=date(2026, 3, 13))
        )
        session.add_all([
            LedgerTransaction(loan_id=loan["id"], kind=TransactionKind.LATE_FEE, amount_minor=2000,
                              currency="CNY", effective_on=date(2026, 3, 13), installment_seq=2,
                              created_at=datetime.now(UTC)),
            FeeReplayDue(loan_id=loan["id"]),
        ])  # fmt: skip
    assert (await w.get(f"/v1/loans/{loan['id']}"))["balances"]["fees_outstanding"] == "20.00"

    run = await close(w, "2026-03-21")
    assert (run["counts"]["late_fees_assessed"], run["counts"]["late_fees_withdrawn"]) == (0, 1)
    rows = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [(r["kind"], r["amount"], r["installment_seq"], r["effective_on"]) for r in rows
            if r["kind"] == "late_fee_forgiven"] == [
        ("late_fee_forgiven", "20.00", 2, "2026-03-13"),
    ]  # fmt: skip
    assert (await event_types(loan["id"]))["loan.late_fee_forgiven"] == 1
    got = await w.get(f"/v1/loans/{loan['id']}")
    # Installment 1's fee stands, owed on installment 2, which its payment paid it first.
    assert (got["balances"]["fees_outstanding"], got["balances"]["overdue_amount"]) == (
        "0.00", "20.00",
    )  # fmt: skip
    paid = await w.pay(loan["id"], got["balances"]["payoff_amount"], "2026-03-21")
    assert paid["loan"]["status"] == "paid_off"
    await assert_ledger_invariant(loan["id"])
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(FeeReplayDue)) == 0


async def test_an_older_release_s_judgement_of_a_late_fee_stands(
    client: httpx.AsyncClient,
) -> None:
    """Until the twenty-seventh session a close counted the payments received by its own date:
    an installment settled after its grace, before that close, owed nothing. The first close
    after an upgrade judged it again by its grace, charged it months late and made it overdue
    (a tester's). A grace an earlier close judged owes a fee only while it is unpaid."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    await close(w, "2026-01-10")
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    paid = await w.pay(loan["id"], "412.00", "2026-02-15")  # due Feb 10, grace to Feb 13
    # The older release closed through Feb 20 and, counting that payment, charged nothing.
    now = datetime.now(UTC)
    async with session_scope() as session:
        session.add(CloseRun(as_of=date(2026, 2, 20), status=CloseStatus.SUCCEEDED,
                             started_at=now, finished_at=now, succeeded_at=now, attempts=1,
                             counts={}, steps={}))  # fmt: skip
    assert (await close(w, "2026-02-21"))["counts"]["late_fees_assessed"] == 0
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["balances"]["fees_outstanding"]) == (0, "0.00")

    # The payment bounces: the installment owes again, and so owes the fee.
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    assert (await close(w, "2026-02-22"))["counts"]["late_fees_assessed"] == 1
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    assert schedule["installments"][0]["fees"] == "20.00"


async def test_a_payment_cures_at_once(client: httpx.AsyncClient) -> None:
    w, loan = await late_world(client)
    await close(w, "2026-02-20")
    assert (await w.get(f"/v1/loans/{loan['id']}"))["bucket"] == "1-30"
    payment = await w.pay(loan["id"], "432.00", "2026-02-20")
    assert payment["loan"]["status"] == "active"
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"], got["status"]) == (0, "current", "active")
    events = (await client.get("/v1/events?type=loan.delinquency_changed",
                               headers=w.admin)).json()["items"]  # fmt: skip
    assert [(e["data"]["previous_bucket"], e["data"]["bucket"]) for e in events] == [
        ("current", "1-30"), ("1-30", "current"),
    ]  # fmt: skip
    # A bounced cure makes the loan late again, at once: as of the next date to close, the
    # bounce being today's, after the business date.
    await w.post(f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}, expect=200)
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"], got["delinquency_as_of"]) == (
        11, "1-30", "2026-02-21",
    )  # fmt: skip
    # The feed tells the money first, then what it led to.
    feed = (await w.get("/v1/events?limit=200", headers=w.admin))["items"]
    mine = [e["type"] for e in feed if e["data"].get("loan_id") == loan["id"]]
    assert [t for t in mine if not t.startswith("risk.")][-4:] == [
        "payment.received", "loan.delinquency_changed",
        "payment.reversed", "loan.delinquency_changed",
    ]  # fmt: skip


async def test_a_payment_dated_after_the_business_date_cures_at_once(
    client: httpx.AsyncClient,
) -> None:
    """The normal case during the day: the business date is yesterday's close and the payment
    is today's. The loan is current at once, its days past due and bucket agreeing with its
    overdue amount; tonight's close finds nothing more to move."""
    w, loan = await late_world(client)
    await close(w, "2026-02-20")
    await w.pay(loan["id"], "432.00", "2026-02-21")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"], got["status"]) == (0, "current", "active")
    assert (got["delinquency_as_of"], got["balances"]["overdue_amount"]) == ("2026-02-21", "0.00")
    assert (await event_types(loan["id"]))["loan.delinquency_changed"] == 2  # in and out
    run = await close(w, "2026-02-21")
    assert run["counts"]["delinquency_changes"] == 0
    assert (await event_types(loan["id"]))["loan.delinquency_changed"] == 2


async def test_a_partial_payment_dated_after_the_business_date_counts_as_of_its_date(
    client: httpx.AsyncClient,
) -> None:
    """Sixty days late on the business date (11-04), the borrower pays the oldest installment
    on 11-05: on that date the next one is 31 days late, still 31-60. Reckoned as of 11-04 with
    11-05's money, the loan showed 30 days (1-30), a day that never was, and tonight's close
    moved it back to 31-60, raising dpd_roll_forward anew (a tester's repro). The move from 60
    days to 31 is announced, though the bucket stays (a tester's: a subscriber counting a day
    a day from the last event was a month out)."""
    w = await world(client, grace_days=3, late_fee={"kind": "fixed", "amount": "25.00"})
    loan = await w.loan(principal="3000.00", term=6, disbursed_on="2026-08-05",
                        first_due_date="2026-09-05")  # fmt: skip
    await close(w, "2026-11-04")
    late = await w.get(f"/v1/loans/{loan['id']}")
    assert (late["days_past_due"], late["bucket"]) == (60, "31-60")
    first = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][0]
    events_before = await event_types(loan["id"])

    owed = Decimal(first["total"]) - Decimal(first["paid"])
    await w.pay(loan["id"], str(owed), "2026-11-05")
    paid = await w.get(f"/v1/loans/{loan['id']}")
    assert (paid["days_past_due"], paid["bucket"]) == (31, "31-60")
    assert paid["delinquency_as_of"] == "2026-11-05"
    second = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][1]
    assert second["status"] == "overdue"
    assert Decimal(paid["balances"]["overdue_amount"]) >= Decimal(second["total"])
    moved = await event_types(loan["id"])
    assert moved["loan.delinquency_changed"] == events_before["loan.delinquency_changed"] + 1
    feed = (await w.get("/v1/events?type=loan.delinquency_changed&limit=200", w.admin))["items"]
    announced = [e["data"] for e in feed if e["data"]["loan_id"] == loan["id"]][-1]
    assert (announced["as_of"], announced["days_past_due"], announced["previous_bucket"],
            announced["bucket"]) == ("2026-11-05", 31, "31-60", "31-60")  # fmt: skip
    # A payment dated the business date, recorded after: the loan stays reckoned as of 11-05.
    small = await w.pay(loan["id"], "10.00", "2026-11-04")
    again = await w.get(f"/v1/loans/{loan['id']}")
    assert (again["days_past_due"], again["delinquency_as_of"]) == (31, "2026-11-05")
    # Nor does a reversal (a re-verifier's: it took the loan back to 11-04, its event dated so).
    await w.post(f"/v1/payments/{small['id']}/reverse", {"reason": "error"}, expect=200)
    reversed_ = await w.get(f"/v1/loans/{loan['id']}")
    assert (reversed_["days_past_due"], reversed_["delinquency_as_of"]) == (31, "2026-11-05")
    # Nor does relief approved after it, decided on the business date (it reckoned the loan
    # as of that date, the day before).
    asked = await w.post(f"/v1/loans/{loan['id']}/restructures",
                         {"kind": "fee_waiver", "reason": "goodwill"}, expect=201)  # fmt: skip
    approved = await w.post(f"/v1/restructures/{asked.json()['id']}/approve", {}, w.admin, 200)
    assert approved.json()["decided_on"] == "2026-11-04"
    waived = await w.get(f"/v1/loans/{loan['id']}")
    assert (waived["days_past_due"], waived["delinquency_as_of"]) == (31, "2026-11-05")

    run = await close(w, "2026-11-05")
    assert run["counts"]["delinquency_changes"] == 0
    closed = await w.get(f"/v1/loans/{loan['id']}")
    assert (closed["days_past_due"], closed["bucket"]) == (31, "31-60")
    after = await event_types(loan["id"])
    assert after["loan.delinquency_changed"] == moved["loan.delinquency_changed"]
    assert after["risk.flag_raised"] == moved["risk.flag_raised"]


async def test_a_close_that_sets_days_past_due_back_within_the_bucket_announces_it(
    client: httpx.AsyncClient,
) -> None:
    """149 days late on the business date (09-01), the borrower pays the oldest installment on
    09-03: the payment reckons the loan as of 09-02, the next date to close, at 120 days. The
    close of 09-02 counts no payment after it: 150 days, then 121 with the payment at 09-03's,
    all in 90+. Both closes told it; the first was silent, and a subscriber adding the days
    since the last event read 120 where the loan showed 150 (a re-verifier's)."""
    w = await world(client, grace_days=3, late_fee={"kind": "fixed", "amount": "25.00"})
    loan = await w.loan(principal="3000.00", term=12, disbursed_on="2026-03-05")
    await close(w, "2026-09-01")
    first = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][0]
    await w.pay(loan["id"], str(Decimal(first["total"]) - Decimal(first["paid"])), "2026-09-03")

    async def announced() -> list[tuple[str, int, str, str]]:
        feed = await w.get("/v1/events?type=loan.delinquency_changed&limit=200", w.admin)
        return [(e["data"]["as_of"], e["data"]["days_past_due"], e["data"]["bucket"],
                 e["data"]["previous_bucket"]) for e in feed["items"]
                if e["data"]["loan_id"] == loan["id"]]  # fmt: skip

    assert (await announced())[-1] == ("2026-09-02", 120, "90+", "90+")
    for day, days in (("2026-09-02", 150), ("2026-09-03", 121)):
        run = await close(w, day)
        got = await w.get(f"/v1/loans/{loan['id']}")
        assert (got["days_past_due"], got["delinquency_as_of"]) == (days, day)
        assert (await announced())[-1] == (day, days, "90+", "90+")
        assert run["counts"]["delinquency_changes"] == 1
    seen = len(await announced())
    await close(w, "2026-09-04")  # a day a day: nothing to tell
    assert len(await announced()) == seen


async def test_a_payment_during_the_close_that_the_close_sets_back_is_announced(
    client: httpx.AsyncClient,
) -> None:
    """Tonight's close of yesterday runs; a payment dated today comes in meanwhile and cures
    the loan as of today. The close, reckoning yesterday without it, sets the loan back: that
    move is announced, as when the payment came before the close. It was silent, and a
    subscriber following the loan by its events kept it current (a tester's, on PostgreSQL)."""
    w, loan = await late_world(client)
    await close(w, "2026-02-20")
    async with session_scope() as session:  # the close of 02-21 has started
        session.add(CloseRun(as_of=date(2026, 2, 21), status=CloseStatus.RUNNING))
    await w.pay(loan["id"], "432.00", "2026-02-22")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["bucket"], got["delinquency_as_of"]) == ("current", "2026-02-22")
    async with session_scope() as session:  # ... and reaches its delinquency step
        await session.execute(delete(CloseRun).where(CloseRun.as_of == date(2026, 2, 21)))
    await close(w, "2026-02-21")
    got = await w.get(f"/v1/loans/{loan['id']}")
    moves = [
        (e["data"]["previous_bucket"], e["data"]["bucket"], e["data"]["as_of"])
        for e in (await w.get("/v1/events?type=loan.delinquency_changed", w.admin))["items"]
    ]
    assert moves[-2:] == [("1-30", "current", "2026-02-22"), ("current", "1-30", "2026-02-21")]
    assert got["bucket"] == "1-30"
    await close(w, "2026-02-22")  # and the payment cures it again
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["bucket"] == "current"


async def test_while_closes_are_behind_a_payment_reckons_no_further_than_the_next_date(
    client: httpx.AsyncClient,
) -> None:
    """The business date is 09-01 and a payment dated 10-15 comes in (a book loaded before its
    catch-up): the loan is reckoned as of 09-02 at most, so no event or flag is dated on a day
    the closes have not reached, to be undone by the catch-up (a re-verifier's repro)."""
    w = await world(client, grace_days=0, late_fee={"kind": "fixed", "amount": "25.00"})
    await close(w, "2026-09-01")
    loan = await w.loan(principal="3000.00", term=6, disbursed_on="2026-07-01")
    await w.pay(loan["id"], "100.00", "2026-10-15")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["delinquency_as_of"] == "2026-09-02"
    feed = (await w.get("/v1/events?limit=200", headers=w.admin))["items"]
    dated = [e["data"].get("as_of") or e["data"].get("raised_on") for e in feed]
    # (Booked past due, its flags wait for the catch-up: the dated events are delinquency's.)
    assert all(day <= "2026-09-02" for day in dated if day)


async def test_a_close_before_a_loan_was_disbursed_leaves_it_alone(
    client: httpx.AsyncClient,
) -> None:
    """A loan booked back-dated before the first close is reckoned as of today; a first close
    for a date before its disbursement (a migrated book's catch-up) announced it back to
    current on a day it did not exist. The closes leave it alone until its disbursement."""
    w = await world(client, grace_days=3)
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-03-01")
    booked = await w.get(f"/v1/loans/{loan['id']}")
    assert booked["days_past_due"] > 90
    events_before = await event_types(loan["id"])
    await close(w, "2026-02-01")
    untouched = await w.get(f"/v1/loans/{loan['id']}")
    fields = ("days_past_due", "bucket", "status", "delinquency_as_of")
    assert [untouched[k] for k in fields] == [booked[k] for k in fields]
    assert await event_types(loan["id"]) == events_before
    await close(w, "2026-03-01")  # its disbursement: seen as it stood then
    seen = await w.get(f"/v1/loans/{loan['id']}")
    assert (seen["days_past_due"], seen["delinquency_as_of"]) == (0, "2026-03-01")
    await close(w, "2026-03-05")  # grace days 3: past due from the installment's Apr 1
    await close(w, "2026-04-05")
    feed = (await w.get("/v1/events?type=loan.delinquency_changed&limit=200", w.admin))["items"]
    moves = [
        (e["data"]["as_of"], e["data"]["restated"], e["data"]["previous_status"],
         e["data"]["status"], e["data"]["bucket"])
        for e in feed if e["data"]["loan_id"] == loan["id"]
    ]  # fmt: skip
    # Seen earlier is no move in time: told as restated, so no subscriber takes it for a cure
    # (a tester heard loans cure); kept silent, the next move named a previous status no
    # event had told (two testers').
    assert moves == [
        ("2026-03-01", True, booked["status"], "active", "current"),
        ("2026-04-02", False, "active", "delinquent", "1-30"),
    ]


async def test_rerunning_a_date_changes_nothing(client: httpx.AsyncClient) -> None:
    w, _ = await late_world(client)
    await close(w, "2026-03-01")
    before = (await event_types(), await late_fee_rows())
    again = await close(w, "2026-03-01")
    assert again["status"] == "succeeded"
    assert again["attempts"] == 2
    assert (await event_types(), await late_fee_rows()) == before


async def test_a_rerun_keeps_what_the_date_counted(client: httpx.AsyncClient) -> None:
    w, _ = await late_world(client)
    await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    await close(w, "2026-02-10")
    first = await close(w, "2026-02-11")  # both loans current -> 1-30
    assert first["counts"]["delinquency_changes"] == 2
    await close(w, "2026-02-11")
    again = await w.get("/v1/close-runs/2026-02-11", headers=w.admin)
    assert (again["attempts"], again["counts"]["delinquency_changes"]) == (2, 2)

    await close(w, "2026-02-12")
    first = await close(w, "2026-02-13")  # both loans' fees, their 3 days' grace over
    counted = {"late_fees_assessed": 2, "late_fees_minor_CNY": 4000, "delinquency_changes": 0}
    assert {key: first["counts"].get(key) for key in counted} == counted
    await close(w, "2026-02-13")
    third = await close(w, "2026-02-13")
    assert third["attempts"] == 3
    assert {key: third["counts"].get(key) for key in counted} == counted
    got = await w.get("/v1/close-runs/2026-02-13", headers=w.admin)
    assert {key: got["counts"].get(key) for key in counted} == counted
    assert got["steps"]["late_fees"]["counts"]["late_fees_assessed"] == 0  # this attempt's


async def test_a_rerun_that_charges_a_fee_leaves_a_cancelled_loan_cancelled(
    client: httpx.AsyncClient,
) -> None:
    """A loan charged today's fee, paid off today and cancelled: a rerun of today that charged
    another loan's fee replayed every loan charged today with a payment since, the cancelled
    one too (not locked by the chunk), and stored it paid off; a reversal then reopened it
    as delinquent while its refund was still owed (a tester's)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    today = clock.today()
    returned = await w.loan(principal="1200.00", term=3, disbursed_on=str(today - timedelta(48)))
    assert (await close(w, str(today)))["counts"]["late_fees_assessed"] == 1
    payoff = (await w.get(f"/v1/loans/{returned['id']}"))["balances"]["payoff_amount"]
    paid = await w.pay(returned["id"], payoff, today)
    await w.post(f"/v1/loans/{returned['id']}/cancel", {"reason": "returned"}, expect=200)
    await w.loan(principal="1200.00", term=3, disbursed_on=str(today - timedelta(47)))
    assert (await close(w, str(today)))["counts"]["late_fees_assessed"] == 2  # with the first

    got = await w.get(f"/v1/loans/{returned['id']}")
    assert (got["status"], got["balances"]["refund_due"]) == ("cancelled", payoff)
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "chargeback"}, expect=200)
    got = await w.get(f"/v1/loans/{returned['id']}")
    assert (got["status"], got["balances"]["refund_due"]) == ("cancelled", "0.00")


async def test_a_catch_up_counts_only_payments_received_by_each_date(
    client: httpx.AsyncClient,
) -> None:
    """Two loans alike, 500.00 due 2026-10-01 without grace; B pays it on 10-05, recorded before
    the catch-up closes 09-13 .. 10-10: each date sees B as it stood then, as it sees A."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0",
                    grace_days=0, late_fee={"kind": "percent", "percent": "0.05",
                                            "cap_per_installment": "30.00"})  # fmt: skip
    await close(w, "2026-09-01")
    a = await w.loan(principal="3000.00", term=6, disbursed_on="2026-09-01")
    b = await w.loan(principal="3000.00", term=6, disbursed_on="2026-09-01")
    assert b["schedule"]["installments"][0]["due_date"] == "2026-10-01"
    await close(w, "2026-09-12")
    payment = await w.pay(b["id"], "500.00", "2026-10-05")
    await close(w, "2026-10-10")

    for loan in (a, b):
        types = await event_types(loan["id"])
        assert (types["installment.due_soon"], types["loan.late_fee_assessed"]) == (1, 1)
        assert types["loan.delinquency_changed"] == 1  # current -> 1-30 on 10-02
    fees = (await w.get("/v1/events?type=loan.late_fee_assessed", headers=w.admin))["items"]
    # Without grace, the due date is the last day to pay: its close charges the fee.
    assert {(e["data"]["loan_id"], e["data"]["as_of"], e["data"]["amount"]) for e in fees} == {
        (a["id"], "2026-10-01", "25.00"), (b["id"], "2026-10-01", "25.00"),
    }  # fmt: skip
    counts = (await w.get("/v1/close-runs/2026-10-01", headers=w.admin))["counts"]
    assert counts["late_fees_assessed"] == 2
    counts = (await w.get("/v1/close-runs/2026-10-02", headers=w.admin))["counts"]
    assert counts["delinquency_changes"] == 2
    # B's payment came after the fee, so pays it first (as a replay would): 25.00 of the
    # installment is still unpaid and B stays late, 9 days on 10-10 like A.
    got = await w.get(f"/v1/payments/{payment['id']}")
    assert got["allocation"] == [
        {"installment_seq": 1, "fees": "25.00", "interest": "0.00", "principal": "475.00"}
    ]
    for loan, overdue in ((a, "525.00"), (b, "25.00")):
        got = await w.get(f"/v1/loans/{loan['id']}")
        assert (got["days_past_due"], got["bucket"], got["status"]) == (9, "1-30", "delinquent")
        assert got["balances"]["overdue_amount"] == overdue
    # So B owes 25.00 more principal than its payment.received said: the fee's event says so.
    received = (await w.get("/v1/events?type=payment.received", headers=w.admin))["items"]
    assert received[0]["data"]["principal_outstanding"] == "2500.00"
    announced = {e["data"]["loan_id"]: e["data"]["principal_outstanding"] for e in fees}
    assert announced == {a["id"]: "3000.00", b["id"]: "2525.00"}
    assert (await w.get(f"/v1/loans/{b['id']}"))["balances"]["principal_outstanding"] == "2525.00"


async def test_catch_up_closes_each_missed_date_in_order(client: httpx.AsyncClient) -> None:
    w, _loan = await late_world(client)
    await close(w, "2026-02-05")
    run = await close(w, "2026-02-08")  # Feb 6, 7 and 8 were missed
    assert run["as_of"] == "2026-02-08"
    # The answer says which dates the request closed: each has its own run and counts.
    assert run["dates"] == ["2026-02-06", "2026-02-07", "2026-02-08"]
    for day in ("2026-02-06", "2026-02-07", "2026-02-08"):
        missed = await w.get(f"/v1/close-runs/{day}", headers=w.admin)
        assert missed["status"] == "succeeded"
        assert set(missed["steps"]) == set(close_service.STEPS)
    # The reminder for Feb 10 belongs to the close of Feb 7, which was caught up.
    reminder = await w.get("/v1/close-runs/2026-02-07", headers=w.admin)
    assert reminder["counts"]["reminders_sent"] == 1
    business = await w.get("/v1/business-date", headers=w.admin)
    assert business["business_date"] == "2026-02-08"
    assert business["last_close_run"]["as_of"] == "2026-02-08"
    # The POS needs the date its promises count from; the run's counts are the whole book's.
    assert await w.get("/v1/business-date") == {
        "business_date": "2026-02-08", "last_close_run": None,
    }  # fmt: skip
    events = (await client.get("/v1/events?type=installment.due_soon",
                               headers=w.admin)).json()["items"]  # fmt: skip
    assert [(e["data"]["due_date"], e["data"]["amount_due"]) for e in events] == [
        ("2026-02-10", "412.00"),
    ]


async def test_an_installment_already_inside_the_reminder_window_is_reminded_at_once(
    client: httpx.AsyncClient,
) -> None:
    """Booked after the close of Jan 10 with its first installment due Jan 12, two days on:
    the reminder is the next close's, a day ahead, and no later close's."""
    w, _ = await late_world(client)  # its loan's first reminder is the close of Feb 7's
    near = await w.loan(principal="300.00", term=3, disbursed_on="2026-01-10",
                        first_due_date="2026-01-12")  # fmt: skip
    first = await close(w, "2026-01-11")
    assert first["counts"]["reminders_sent"] == 1
    await close(w, "2026-01-12")
    events = (await client.get("/v1/events?type=installment.due_soon",
                               headers=w.admin)).json()["items"]  # fmt: skip
    assert [(e["data"]["loan_id"], e["data"]["due_date"], e["data"]["days_until_due"],
             e["data"]["as_of"]) for e in events] == [
        (near["id"], "2026-01-12", 1, "2026-01-11"),
    ]  # fmt: skip


async def test_no_reminder_from_a_date_before_the_disbursement(client: httpx.AsyncClient) -> None:
    """Booked for Jan 13, due Jan 15, before a catch-up from Jan 11: the close of Jan 12 had
    it inside its window but no loan yet; the close of Jan 13 reminds it (a re-verifier's)."""
    w, _ = await late_world(client)
    await w.loan(principal="300.00", term=3, disbursed_on="2026-01-13",
                 first_due_date="2026-01-15")  # fmt: skip
    await close(w, "2026-01-14")
    sent = [(await w.get(f"/v1/close-runs/2026-01-{day}", headers=w.admin))["counts"]
            ["reminders_sent"] for day in (11, 12, 13, 14)]  # fmt: skip
    assert sent == [0, 0, 1, 0]


async def test_dates_before_the_business_date_or_in_the_future_are_refused(
    client: httpx.AsyncClient,
) -> None:
    w, _ = await late_world(client)
    await close(w, "2026-02-01")
    past = await close(w, "2026-01-31", expect=409)
    assert past["code"] == "close_date_in_past"
    future = await close(w, "2999-01-01", expect=422)
    assert future["code"] == "close_date_in_future"
    # Named as every other refused as_of is (a tester's: the code alone did not say which).
    assert [e["field"] for e in future["errors"]] == ["as_of"]
    refused = await w.post("/v1/close-runs", {"as_of": "2026-02-02"})  # a merchant key
    assert refused.status_code == 403
    missing = await client.get("/v1/close-runs/2020-01-01", headers=w.admin)
    assert missing.status_code == 404
    assert missing.json()["code"] == "close_run_not_found"


async def test_a_crashed_close_is_rerun_without_duplicates(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = await late_world(client)
    borrower = await w.borrower(monthly_income="20000.00")
    for _ in range(4):
        await w.loan(borrower["id"], principal="1200.00", term=3, disbursed_on="2026-01-10")
    await close(w, "2026-02-13")
    monkeypatch.setattr(get_settings().close, "chunk_size", 2)  # three chunks of loans

    calls = {"n": 0}
    real = close_service.STEPS["delinquency"]

    async def crash_on_second_chunk(*args: Any) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed")
        return await real(*args)

    monkeypatch.setitem(close_service.STEPS, "delinquency", crash_on_second_chunk)
    crashed = await close(w, "2026-02-14")
    assert crashed["status"] == "failed"
    assert "worker killed" in crashed["error"]
    assert (await w.get("/v1/business-date", headers=w.admin))["business_date"] == "2026-02-13"
    assert await late_fee_rows() == 5  # the fee step had finished

    monkeypatch.setitem(close_service.STEPS, "delinquency", real)
    rerun = await close(w, "2026-02-14")
    assert rerun["status"] == "succeeded"
    assert await late_fee_rows() == 5
    types = await event_types()
    assert types["loan.late_fee_assessed"] == 5
    assert types["loan.delinquency_changed"] == 5  # each loan current -> 1-30, once
    async with session_scope() as session:
        per_installment = Counter(
            (await session.execute(
                select(LedgerTransaction.loan_id, LedgerTransaction.installment_seq)
                .where(LedgerTransaction.kind == "late_fee")
            )).all()
        )  # fmt: skip
    assert set(per_installment.values()) == {1}


async def test_a_failed_rerun_keeps_the_business_date(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The business date closed, then closed again and a step fails (a lost connection): the
    date stays closed, so the day before cannot be closed again over the later book (a tester
    saw days past due set back and a bucket move announced twice)."""
    w, _ = await late_world(client)
    await close(w, "2026-02-14")

    async def lost_connection(*args: Any) -> dict[str, int]:
        raise RuntimeError("connection was closed in the middle of operation")

    monkeypatch.setitem(close_service.STEPS, "risk", lost_connection)
    failed = await close(w, "2026-02-14")
    assert (failed["status"], failed["attempts"]) == ("failed", 2)
    # The step cut short failed with the run; it read "running" (a tester's).
    assert failed["steps"]["risk"]["status"] == "failed"
    assert failed["steps"]["risk"]["finished_at"].endswith("Z")
    assert failed["steps"]["promises"]["status"] == "succeeded"
    # Its times as every instant the API writes: with Z (they had +00:00: a tester's).
    promises = failed["steps"]["promises"]
    assert promises["started_at"].endswith("Z")
    assert promises["finished_at"].endswith("Z")
    business = await w.get("/v1/business-date", headers=w.admin)
    assert business["business_date"] == "2026-02-14"
    scraped = (await client.get("/metrics", headers=w.admin)).text
    (gauge,) = [line.split()[-1] for line in scraped.splitlines()
                if line.startswith("loanwatch_business_date_timestamp_seconds ")]  # fmt: skip
    assert datetime.fromtimestamp(float(gauge), UTC).date() == date(2026, 2, 14)
    refused = await close(w, "2026-02-13", expect=409)
    assert refused["code"] == "close_date_in_past"
    monkeypatch.undo()
    assert (await close(w, "2026-02-14"))["status"] == "succeeded"


async def test_percent_fee_with_cap_and_tolerance(client: httpx.AsyncClient) -> None:
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=0, late_fee={"kind": "percent", "percent": "0.05",
                                            "cap_per_installment": "15.00"})  # fmt: skip
    await close(w, "2026-01-10")
    capped = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    small = await w.loan(principal="60.00", term=3, disbursed_on="2026-01-10")
    tolerated = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    await w.pay(small["id"], "10.00", "2026-01-20")  # leaves 10.60 of 20.60 unpaid
    await w.pay(tolerated["id"], "411.00", "2026-01-20")  # leaves 1.00: within tolerance
    await close(w, "2026-02-11")
    fees = {
        loan["id"]: (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][0]["fees"]
        for loan in (capped, small, tolerated)
    }
    # 5 % of 412.00 = 20.60, capped at 15.00; 5 % of 10.60 = 0.53; nothing within tolerance.
    assert fees == {capped["id"]: "15.00", small["id"]: "0.53", tolerated["id"]: "0.00"}
    got = await w.get(f"/v1/loans/{tolerated['id']}")
    assert (got["days_past_due"], got["status"]) == (0, "active")


async def test_a_cancelled_loan_leaves_the_buckets(client: httpx.AsyncClient) -> None:
    w, loan = await late_world(client)
    await close(w, "2026-03-01")
    assert (await w.get(f"/v1/loans/{loan['id']}"))["bucket"] == "1-30"
    await w.post(f"/v1/loans/{loan['id']}/cancel", {}, expect=200)
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["status"], got["days_past_due"], got["bucket"]) == ("cancelled", 0, "current")
    assert (await w.get("/v1/loans?bucket=1-30"))["items"] == []
    # Announced, as a payoff is, before the loan's end (a returned loan stayed in a
    # subscriber's 1-30 queue: a tester's).
    async with session_scope() as session:
        events = list(await session.execute(
            select(Event.type, Event.data).where(Event.loan_id == loan["id"])
            .order_by(Event.position)
        ))  # fmt: skip
    types = [type_ for type_, _ in events]
    changed, data = events[types.index("loan.cancelled") - 1]
    assert changed == "loan.delinquency_changed"
    assert (data["previous_bucket"], data["previous_status"]) == ("1-30", "delinquent")
    assert (data["bucket"], data["status"], data["days_past_due"]) == ("current", "cancelled", 0)
    # Dated as the loan's cancelled_on, never before an event it follows (a re-verifier's).
    assert data["as_of"] == str(clock.today())
    await close(w, "2026-03-02")
    assert (await w.get(f"/v1/loans/{loan['id']}"))["bucket"] == "current"


async def test_zero_decimal_currencies_use_their_own_minor_units(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "default_currency", "JPY")
    w = await world(client, currency="JPY", amortization="equal_principal",
                    annual_interest_rate="0", grace_days=0,
                    late_fee={"kind": "fixed", "amount": "500"})  # fmt: skip
    borrower = await w.borrower(monthly_income="300000")
    assert borrower["credit_limit"] == "50000"  # 3 x income, capped at 50000 (0 decimals)
    await close(w, "2026-01-10")
    loan = await w.loan(borrower["id"], principal="30000", term=3, disbursed_on="2026-01-10")
    assert loan["schedule"]["installments"][0]["total"] == "10000"
    await w.pay(loan["id"], "9999", "2026-02-09")  # leaves 1 yen: within the 1.00 tolerance
    await close(w, "2026-02-12")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["balances"]["fees_outstanding"]) == (0, "0")


async def test_a_catch_up_longer_than_the_limit_is_refused(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = await late_world(client)  # business date 2026-01-10
    monkeypatch.setattr(get_settings().close, "max_dates_per_request", 30)
    too_far = await close(w, "2026-02-10", expect=422)  # 31 dates
    assert too_far["code"] == "close_catch_up_too_long"
    assert [e["field"] for e in too_far["errors"]] == ["as_of"]
    assert (await close(w, "2026-02-09"))["status"] == "succeeded"  # 30 dates
    assert (await w.get("/v1/business-date", headers=w.admin))["business_date"] == "2026-02-09"


async def test_a_close_analyses_the_tables_postgresql_never_analysed(
    client: httpx.AsyncClient,
) -> None:
    """A book bulk-loaded where autovacuum is off (or has not come round yet) has no
    statistics: the close's statements were planned for empty tables, and one UPDATE of a
    20,000-loan book ran for 10 minutes while payments waited on its locks (a tester's). A
    close analyses such tables first; here loan_installment is made to look never analysed,
    as a new database's tables are."""
    from sqlalchemy import text

    w = await world(client)
    await w.loan(disbursed_on=str(clock.today() - timedelta(days=40)))
    never = text("UPDATE pg_class SET reltuples = -1 WHERE oid = 'loan_installment'::regclass")
    estimate = text("SELECT reltuples FROM pg_class WHERE oid = 'loan_installment'::regclass")
    async with session_scope() as session:
        await session.execute(never)
    await w.post("/v1/close-runs", {"as_of": str(clock.today())}, headers=w.admin, expect=201)
    async with session_scope() as session:
        assert await session.scalar(estimate) >= 12
