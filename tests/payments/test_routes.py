"""Payments, allocation, payoff, reversal and concurrency over HTTP."""

import asyncio
from datetime import date, timedelta
from decimal import Decimal

import httpx
from dateutil.relativedelta import relativedelta
from sqlalchemy import case, func, select

from app import clock
from app.close import service as close_service
from app.close.models import CloseRun, CloseStatus
from app.db import session_scope, utc_now
from app.events.models import Event
from app.ledger.models import LedgerTransaction
from app.loans.models import Loan, LoanInstallment
from app.payments.models import Payment
from tests.factories import World, world


async def three_month_loan(client: httpx.AsyncClient) -> tuple[World, dict]:
    """1200.00 at 12 % over 3 months, equal principal: 400 + 12 / 400 + 8 / 400 + 4."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    # Pin the business date, so delinquency is reckoned as of the loan's first days.
    await w.post("/v1/close-runs", {"as_of": "2026-01-15"}, headers=w.admin, expect=201)
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-15")
    return w, loan


async def assert_ledger_invariant(loan_id: str) -> None:
    """payments - reversals = principal + interest + fees repaid + credit balance."""
    async with session_scope() as session:
        net = await session.scalar(
            select(func.coalesce(func.sum(case(
                (LedgerTransaction.kind == "payment", LedgerTransaction.amount_minor),
                (LedgerTransaction.kind == "reversal", -LedgerTransaction.amount_minor),
                else_=0,
            )), 0)).where(LedgerTransaction.loan_id == loan_id)
        )  # fmt: skip
        repaid = await session.scalar(
            select(func.sum(
                LoanInstallment.paid_principal_minor + LoanInstallment.paid_interest_minor
                + LoanInstallment.paid_fees_minor
            )).where(LoanInstallment.loan_id == loan_id)
        )  # fmt: skip
        loan = await session.get(Loan, loan_id)
        assert loan is not None
        assert net == repaid + loan.credit_balance_minor
        # The fees too, where the ledger holds every fee (no scheduled fee: it has no row).
        fee_rows = dict((await session.execute(
            select(LedgerTransaction.installment_seq, func.sum(case(
                (LedgerTransaction.kind.in_(("late_fee", "late_fee_reinstated")),
                 LedgerTransaction.amount_minor),
                (LedgerTransaction.kind.in_(("fee_waiver", "late_fee_forgiven")),
                 -LedgerTransaction.amount_minor),
                else_=0,
            ))).where(LedgerTransaction.loan_id == loan_id)
            .group_by(LedgerTransaction.installment_seq)
        )).all())  # fmt: skip
        for i in await session.scalars(
            select(LoanInstallment).where(LoanInstallment.loan_id == loan_id)
        ):
            if i.fees_minor == 0:
                assert fee_rows.get(i.seq, 0) == i.late_fees_minor - i.fees_waived_minor, i.seq


async def fees_by_installment(w: World, loan_id: str) -> tuple[dict[int, str], dict[int, str]]:
    """The fees each installment shows, and what the ledger nets to for it, as a reconciler
    reads them: charged and owed again, less waived and forgiven."""
    schedule = await w.get(f"/v1/loans/{loan_id}/schedule")
    shown = {i["seq"]: i["fees"] for i in schedule["installments"]}
    signs = {"late_fee": 1, "late_fee_reinstated": 1, "fee_waiver": -1, "late_fee_forgiven": -1}
    net = dict.fromkeys(shown, Decimal(0))
    for t in (await w.get(f"/v1/loans/{loan_id}/transactions?limit=200"))["items"]:
        if t["kind"] in signs:
            net[t["installment_seq"]] += signs[t["kind"]] * Decimal(t["amount"])
    return shown, {seq: f"{amount:.2f}" for seq, amount in net.items()}


async def test_waterfall_oldest_due_first_then_future(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    # On 2026-03-20 two installments are due (412.00 and 408.00); 900.00 pays both and 80.00
    # goes to installment 3: its interest (4.00) first, then principal.
    payment = await w.pay(loan["id"], "900.00", "2026-03-20", external_ref="r-1")
    assert payment["status"] == "applied"
    assert payment["allocation"] == [
        {"installment_seq": 1, "fees": "0.00", "interest": "12.00", "principal": "400.00"},
        {"installment_seq": 2, "fees": "0.00", "interest": "8.00", "principal": "400.00"},
        {"installment_seq": 3, "fees": "0.00", "interest": "4.00", "principal": "76.00"},
    ]
    balances = payment["loan"]["balances"]
    assert balances["principal_outstanding"] == "324.00"
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    assert [i["status"] for i in schedule["installments"][:2]] == ["paid", "paid"]
    assert schedule["installments"][2]["paid"] == "80.00"
    await assert_ledger_invariant(loan["id"])


async def test_partial_payment_pays_interest_before_principal(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    payment = await w.pay(loan["id"], "100.00", "2026-02-16")
    assert payment["allocation"] == [
        {"installment_seq": 1, "fees": "0.00", "interest": "12.00", "principal": "88.00"},
    ]
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    # Not yet due as of the business date (2026-01-15).
    assert schedule["installments"][0]["status"] == "partially_paid"
    assert schedule["installments"][0]["paid"] == "100.00"


async def test_a_late_loan_paid_off_ends_out_of_every_bucket(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    await w.post("/v1/close-runs", {"as_of": "2026-02-25"}, headers=w.admin, expect=201)
    assert (await w.get(f"/v1/loans/{loan['id']}"))["bucket"] == "1-30"
    payoff = (await w.get(f"/v1/loans/{loan['id']}"))["balances"]["payoff_amount"]
    await w.pay(loan["id"], payoff)  # today: the payoff quoted is as of today
    feed = (await w.get("/v1/events?limit=200", headers=w.admin))["items"]
    mine = [e for e in feed if e["data"].get("loan_id") == loan["id"]]
    types = [e["type"] for e in mine if not e["type"].startswith("risk.")]
    assert types[-3:] == ["payment.received", "loan.delinquency_changed", "loan.paid_off"]
    paid_off = next(e["data"] for e in mine if e["type"] == "loan.paid_off")
    assert (paid_off["status"], paid_off["days_past_due"], paid_off["bucket"]) == (
        "paid_off", 0, "current",
    )  # fmt: skip
    # The payment tells the status before the move its reckoning then tells, as a cure's
    # does: it said paid_off already, before a loan.delinquency_changed from delinquent (a
    # tester's); its reversal likewise paid_off, before the reopening.
    received = next(e["data"] for e in mine if e["type"] == "payment.received")
    moved = [e["data"] for e in mine if e["type"] == "loan.delinquency_changed"][-1]
    assert (received["loan_status"], moved["previous_status"]) == ("delinquent", "delinquent")
    await w.post(f"/v1/payments/{received['payment_id']}/reverse", {"reason": "nsf"}, expect=200)
    feed = (await w.get("/v1/events?type=payment.reversed", headers=w.admin))["items"]
    assert feed[-1]["data"]["loan_status"] == "paid_off"


async def test_payoff_waives_later_interest_and_pays_off(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    # Before the first due date, payoff = 1200 principal + the current period's 12.00 interest.
    first = await w.post(f"/v1/loans/{loan['id']}/payments",
                         {"amount": "1212.01", "received_on": "2026-02-01"})  # fmt: skip
    assert first.status_code == 422
    assert first.json()["code"] == "amount_exceeds_payoff"
    assert "1212.00" in first.json()["detail"]
    payment = await w.pay(loan["id"], "1212.00", "2026-02-01")
    assert payment["loan"]["status"] == "paid_off"
    assert payment["loan"]["balances"]["payoff_amount"] == "0.00"
    assert payment["loan"]["balances"]["interest_outstanding"] == "0.00"
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["status"] == "paid_off"
    assert got["paid_off_on"] == "2026-02-01"
    async with session_scope() as session:
        types = list(await session.scalars(
            select(Event.type).where(Event.loan_id == loan["id"]).order_by(Event.position)
        ))  # fmt: skip
    # The status moves (active to paid_off), as its reversal's does: told both ways.
    assert types == [
        "loan.created",
        "payment.received",
        "loan.delinquency_changed",
        "loan.paid_off",
    ]
    paid_off = (await w.get("/v1/events?type=loan.paid_off", headers=w.admin))["items"][-1]
    assert (paid_off["data"]["paid_off_on"], paid_off["data"]["disbursed_on"],
            paid_off["data"]["term"]) == ("2026-02-01", "2026-01-15", 3)  # fmt: skip
    assert got["days_past_due"] == 0
    assert got["bucket"] == "current"
    late = await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "1.00"})
    assert late.status_code == 409
    assert late.json()["code"] == "loan_not_active"
    b = await w.get(f"/v1/borrowers/{loan['borrower_id']}")
    assert b["exposure"] == "0.00"
    await assert_ledger_invariant(loan["id"])


async def test_reversal_replays_later_payments(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    first = await w.pay(loan["id"], "412.00", "2026-02-15", external_ref="a")
    second = await w.pay(loan["id"], "408.00", "2026-03-15", external_ref="b")
    assert second["allocation"][0]["installment_seq"] == 2

    reversed_ = await w.post(f"/v1/payments/{first['id']}/reverse", {"reason": "nsf"}, expect=200)
    assert reversed_.json()["status"] == "reversed"
    assert reversed_.json()["reversal_reason"] == "nsf"
    # Nothing of it is applied now; where it had gone stays on record for reconciliation.
    for shown in (reversed_.json(), await w.get(f"/v1/payments/{first['id']}")):
        assert (shown["allocation"], shown["reversed_allocation"]) == ([], first["allocation"])
    assert second["reversed_allocation"] is None
    # The second payment (408.00) now goes to installment 1 (412.00, oldest due first).
    again = await w.get(f"/v1/payments/{second['id']}")
    assert again["allocation"] == [
        {"installment_seq": 1, "fees": "0.00", "interest": "12.00", "principal": "396.00"},
    ]
    twice = await w.post(f"/v1/payments/{first['id']}/reverse", {"reason": "nsf"})
    assert twice.status_code == 409
    assert twice.json()["code"] == "payment_already_reversed"
    await assert_ledger_invariant(loan["id"])


async def test_a_payoff_owes_the_whole_spread_origination_fee(client: httpx.AsyncClient) -> None:
    """The fee is the loan's price, spread for convenience: paying off after the first month
    does not shed the eleven shares still ahead, as it sheds their interest."""
    w = await world(
        client, amortization="interest_free", annual_interest_rate="0", term_options=[12],
        origination_fee={"kind": "fixed", "amount": "60.00", "collection": "spread"},
    )  # fmt: skip
    loan = await w.loan(principal="1200.00", term=12, disbursed_on="2026-01-15")
    await w.pay(loan["id"], "105.00", "2026-02-15")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["balances"]["payoff_amount"] == "1155.00"  # 1100.00 principal + 11 x 5.00
    ahead = await w.pay(loan["id"], "1100.01", "2026-02-16")
    assert ahead["loan"]["status"] == "active"  # the old payoff, now only paid ahead
    payoff = await w.pay(loan["id"], "54.99", "2026-02-16")
    assert payoff["loan"]["status"] == "paid_off"
    installments = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"]
    assert {(i["fees"], i["paid"]) for i in installments[1:]} == {("5.00", "105.00")}


async def test_reversing_the_payoff_reopens_the_loan(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    payoff = await w.pay(loan["id"], "1212.00", "2026-02-01")
    assert payoff["loan"]["status"] == "paid_off"
    body = (await w.post(f"/v1/payments/{payoff['id']}/reverse", {"reason": "chargeback"},
                         expect=200)).json()  # fmt: skip
    assert body["loan"]["status"] == "active"
    assert body["loan"]["balances"]["principal_outstanding"] == "1200.00"
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["paid_off_on"] is None
    # Open again, current as before: said, or a subscriber following the loan's state by its
    # events keeps it paid off (a tester's).
    feed = (await w.get("/v1/events?type=loan.delinquency_changed", headers=w.admin))["items"]
    moves = [e["data"] for e in feed if e["data"]["loan_id"] == loan["id"]]
    assert [(m["previous_status"], m["status"], m["previous_bucket"], m["bucket"])
            for m in moves] == [("active", "paid_off", "current", "current"),
                                ("paid_off", "active", "current", "current")]  # fmt: skip
    assert {i["interest"] for i in (await w.get(f"/v1/loans/{loan['id']}/schedule"))[
        "installments"]} == {"12.00", "8.00", "4.00"}  # fmt: skip


async def test_duplicate_external_ref_is_refused(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    await w.pay(loan["id"], "10.00", "2026-02-01", external_ref="gw-1")
    response = await w.post(f"/v1/loans/{loan['id']}/payments",
                            {"amount": "10.00", "received_on": "2026-02-01",
                             "external_ref": "gw-1"})  # fmt: skip
    assert response.status_code == 409
    assert response.json()["code"] == "payment_already_recorded"
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(Payment)) == 1


async def test_received_on_outside_the_loan_life_is_refused(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    for day in ("2026-01-14", "2999-01-01"):
        response = await w.post(f"/v1/loans/{loan['id']}/payments",
                                {"amount": "10.00", "received_on": day})  # fmt: skip
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "received_on"


async def test_transactions_list_the_ledger(client: httpx.AsyncClient) -> None:
    w, loan = await three_month_loan(client)
    p = await w.pay(loan["id"], "50.00", "2026-02-01")
    await w.post(f"/v1/payments/{p['id']}/reverse", {"reason": "error"}, expect=200)
    page = await w.get(f"/v1/loans/{loan['id']}/transactions?limit=2")
    assert [t["kind"] for t in page["items"]] == ["disbursement", "payment"]
    rest = await w.get(f"/v1/loans/{loan['id']}/transactions?cursor={page['next_cursor']}")
    assert [(t["kind"], t["amount"]) for t in rest["items"]] == [("reversal", "50.00")]
    assert rest["next_cursor"] is None


async def test_parallel_payments_on_one_loan_all_count(client: httpx.AsyncClient) -> None:
    w = await world(client, term_options=[12])
    loan = await w.loan(principal="6000.00", term=12, disbursed_on="2026-01-10")
    n = 12
    responses = await asyncio.gather(*[
        w.post(f"/v1/loans/{loan['id']}/payments",
               {"amount": "37.13", "received_on": "2026-02-20", "external_ref": f"par-{i}"})
        for i in range(n)
    ])  # fmt: skip
    assert [r.status_code for r in responses] == [201] * n, [r.text for r in responses]
    async with session_scope() as session:
        repaid = await session.scalar(
            select(func.sum(
                LoanInstallment.paid_principal_minor + LoanInstallment.paid_interest_minor
                + LoanInstallment.paid_fees_minor
            )).where(LoanInstallment.loan_id == loan["id"])
        )  # fmt: skip
        sequences = list(await session.scalars(
            select(Event.position).where(Event.loan_id == loan["id"],
                                         Event.type == "payment.received")
        ))  # fmt: skip
    assert repaid == n * 3713
    assert len(set(sequences)) == n
    await assert_ledger_invariant(loan["id"])


async def test_a_payment_in_time_reported_after_the_close_withdraws_the_late_fee(
    client: httpx.AsyncClient,
) -> None:
    """Reported after the close charged installment 1's late fee, a payment dated on its due
    date shows it was never late: the fee is withdrawn, in the ledger too, on the night it was
    charged. Reversing the payment owes it again."""
    w, loan = await three_month_loan(client)
    await w.post("/v1/close-runs", {"as_of": "2026-03-01"}, headers=w.admin, expect=201)
    # 412.00 due Feb 15, 408.00 of the current period, 400.00 of principal after it.
    payoff = await w.pay(loan["id"], "1220.00", "2026-02-15")
    assert payoff["loan"]["status"] == "paid_off"
    assert payoff["loan"]["balances"]["fees_outstanding"] == "0.00"
    items = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [(t["kind"], t["amount"], t["installment_seq"], t["effective_on"]) for t in items
            if t["kind"].startswith("late_fee")] == [
        ("late_fee", "20.00", 1, "2026-02-18"),  # the close of the last of 3 days' grace
        ("late_fee_forgiven", "20.00", 1, "2026-02-18"),
    ]  # fmt: skip
    await assert_ledger_invariant(loan["id"])
    reversed_ = await w.post(f"/v1/payments/{payoff['id']}/reverse", {"reason": "nsf"},
                             expect=200)  # fmt: skip
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["balances"]["fees_outstanding"] == "20.00"
    await assert_ledger_invariant(loan["id"])
    # Each row is an event, as the charge was: a subscriber adding up the fees from events
    # alone counted the withdrawn fee as owed (a tester's).
    feed = (await w.get("/v1/events?type=loan.*&limit=100", headers=w.admin))["items"]
    told = [(e["type"], e["data"]["amount"], e["data"].get("effective_on"),
             e["data"]["principal_outstanding"])
            for e in feed if e["type"].startswith("loan.late_fee")]  # fmt: skip
    assert told == [
        ("loan.late_fee_assessed", "20.00", "2026-02-18", "1200.00"),
        ("loan.late_fee_forgiven", "20.00", "2026-02-18", "0.00"),
        ("loan.late_fee_reinstated", "20.00", reversed_.json()["reversed_on"], "1200.00"),
    ]


async def test_a_payoff_dated_on_the_night_of_a_late_fee_is_told_the_payoff_without_it(
    client: httpx.AsyncClient,
) -> None:
    """The close of Feb 18 charged installment 1's fee; a payoff dated Feb 18, reported after,
    shows it was never late (that close counts Feb 18's payments, the last day of grace): the
    payoff it is told is the one that pays the loan off, without the fee."""
    w, loan = await three_month_loan(client)
    await w.post("/v1/close-runs", {"as_of": "2026-03-01"}, headers=w.admin, expect=201)
    payments = f"/v1/loans/{loan['id']}/payments"
    refused = await w.post(payments, {"amount": "1240.00", "received_on": "2026-02-18"}, expect=422)
    assert refused.json()["code"] == "amount_exceeds_payoff"
    assert "the payoff amount 1220.00 on 2026-02-18" in refused.json()["detail"]
    paid = await w.pay(loan["id"], "1220.00", "2026-02-18")
    assert (paid["loan"]["status"], paid["loan"]["balances"]["fees_outstanding"]) == (
        "paid_off",
        "0.00",
    )
    await assert_ledger_invariant(loan["id"])


async def test_when_today_is_closed_the_payoff_leaves_out_the_fee_a_payoff_today_withdraws(
    client: httpx.AsyncClient,
) -> None:
    """A close of today's date charged installment 1's fee: it was unpaid after its last day
    of grace, so a payment today pays the fee first and the overdue amount quotes it. A
    payoff today counts as received by that close, which charges no paid-off loan: the payoff
    quoted leaves the fee out (with it, the payment was refused as more than the payoff)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    today = clock.today()
    first_due = today - timedelta(days=4)  # the fourth day late, past 3 days' grace
    terms = {"principal": "1200.00", "term": 3, "first_due_date": str(first_due),
             "disbursed_on": str(first_due - relativedelta(months=1))}  # fmt: skip
    in_arrears, paying_off = await w.loan(**terms), await w.loan(**terms)
    await w.post("/v1/close-runs", {"as_of": str(today)}, headers=w.admin, expect=201)
    got = await w.get(f"/v1/loans/{in_arrears['id']}")
    first = (await w.get(f"/v1/loans/{in_arrears['id']}/schedule"))["installments"][0]
    assert (got["balances"]["fees_outstanding"], first["fees"]) == ("20.00", "20.00")
    assert got["balances"]["overdue_amount"] == first["total"]

    paid = await w.pay(in_arrears["id"], got["balances"]["overdue_amount"])
    assert paid["allocation"] == [
        {"installment_seq": 1, "fees": "20.00", "interest": first["interest"],
         "principal": first["principal"]},
    ]  # fmt: skip
    after = await w.get(f"/v1/loans/{in_arrears['id']}")
    assert (after["balances"]["fees_outstanding"], after["balances"]["overdue_amount"]) == (
        "0.00", "0.00",
    )  # fmt: skip
    await assert_ledger_invariant(in_arrears["id"])

    quoted = await w.get(f"/v1/loans/{paying_off['id']}")
    assert quoted["balances"]["fees_outstanding"] == "20.00"
    payoff = Decimal(quoted["balances"]["payoff_amount"])
    assert payoff == Decimal(got["balances"]["payoff_amount"])
    paid_off = await w.pay(paying_off["id"], str(payoff))
    assert paid_off["loan"]["status"] == "paid_off"
    assert paid_off["loan"]["balances"]["credit_balance"] == "0.00"
    assert paid_off["loan"]["balances"]["fees_outstanding"] == "0.00"
    await assert_ledger_invariant(paying_off["id"])


async def test_the_arrears_quoted_never_ask_more_than_the_payoff(
    client: httpx.AsyncClient,
) -> None:
    """A loan booked six months back, all of it overdue, then today closed: its six fees are
    in the arrears quoted, and out of the payoff, which a payoff today withdraws. The arrears
    came to more than the payoff (1,395.86 against 1,245.86), and paying them was refused
    (a tester's). Quoted at most the payoff, they are paid, and the loan with them."""
    w = await world(client, annual_interest_rate="0.1299", grace_days=3,
                    late_fee={"kind": "fixed", "amount": "25.00"})  # fmt: skip
    today = clock.today()
    loan = await w.loan(principal="1200.00", term=6,
                        disbursed_on=str(today - relativedelta(months=6, days=5)))  # fmt: skip
    await w.post("/v1/close-runs", {"as_of": str(today)}, headers=w.admin, expect=201)
    balances = (await w.get(f"/v1/loans/{loan['id']}"))["balances"]
    assert balances["fees_outstanding"] == "150.00"
    assert balances["overdue_amount"] == balances["payoff_amount"], balances
    paid = await w.pay(loan["id"], balances["overdue_amount"])
    assert (paid["loan"]["status"], paid["loan"]["balances"]["credit_balance"]) == (
        "paid_off", "0.00",
    )  # fmt: skip
    await assert_ledger_invariant(loan["id"])


async def test_a_payment_short_by_more_than_the_tolerance_keeps_the_late_fee(
    client: httpx.AsyncClient,
) -> None:
    """Installment 1 (412.00) paid 410.00 on its due date, reported after the close charged
    its fee: 2.00 unpaid is more than the arrears tolerance of 1.00, so it was late. The fee
    stands, and the payoff includes it."""
    w, loan = await three_month_loan(client)
    await w.post("/v1/close-runs", {"as_of": "2026-03-01"}, headers=w.admin, expect=201)
    await w.pay(loan["id"], "410.00", "2026-02-15")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["balances"]["fees_outstanding"] == "20.00"
    first = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][0]
    assert (first["fees"], first["paid"], first["status"]) == ("20.00", "410.00", "overdue")
    # The fee and 2.00 of installment 1, 408.00 of the current period, 400.00 ahead.
    payments = f"/v1/loans/{loan['id']}/payments"
    refused = await w.post(payments, {"amount": "830.01", "received_on": "2026-02-20"}, expect=422)
    assert refused.json()["code"] == "amount_exceeds_payoff"
    await w.pay(loan["id"], "830.00", "2026-02-20")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["status"], got["balances"]["payoff_amount"]) == ("paid_off", "0.00")
    await assert_ledger_invariant(loan["id"])


async def test_a_percent_late_fee_is_lowered_to_the_fee_on_what_its_night_left_unpaid(
    client: httpx.AsyncClient,
) -> None:
    """A 5 % late fee charged on all of installment 1 (412.00: 20.60), then a payment of 400.00
    dated on its due date reported: the night of the fee left 12.00 unpaid, the fee on which is
    0.60. 20.00 is withdrawn on that night, in the ledger too; reversing the payment owes it
    again."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    late_fee={"kind": "percent", "percent": "0.05",
                              "cap_per_installment": "100.00"})  # fmt: skip
    await w.post("/v1/close-runs", {"as_of": "2026-01-15"}, headers=w.admin, expect=201)
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-15")
    await w.post("/v1/close-runs", {"as_of": "2026-03-01"}, headers=w.admin, expect=201)
    first = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][0]
    assert first["fees"] == "20.60"
    paid = await w.pay(loan["id"], "400.00", "2026-02-15")
    first = (await w.get(f"/v1/loans/{loan['id']}/schedule"))["installments"][0]
    assert (first["fees"], first["paid"], first["status"]) == ("0.60", "400.00", "overdue")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["balances"]["fees_outstanding"] == "0.60"
    items = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [(t["kind"], t["amount"], t["effective_on"]) for t in items
            if t["kind"].startswith("late_fee")] == [
        ("late_fee", "20.60", "2026-02-18"), ("late_fee_forgiven", "20.00", "2026-02-18"),
    ]  # fmt: skip
    await assert_ledger_invariant(loan["id"])
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["balances"]["fees_outstanding"] == "20.60"
    await assert_ledger_invariant(loan["id"])


async def test_a_payoff_and_its_reversal_report_the_status_they_leave(
    client: httpx.AsyncClient,
) -> None:
    """loan.delinquency_changed names the status a loan had before: delinquent before the
    payoff, paid off before the payoff is reversed."""
    w, loan = await three_month_loan(client)
    await w.post("/v1/close-runs", {"as_of": "2026-03-01"}, headers=w.admin, expect=201)
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert got["status"] == "delinquent"
    # 412.00 and its 20.00 late fee, 408.00 for the current period, 400.00 principal ahead.
    paid = await w.pay(loan["id"], "1240.00", "2026-03-02")
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    changes = await w.get("/v1/events?type=loan.delinquency_changed", headers=w.admin)
    assert [(e["data"]["previous_status"], e["data"]["status"]) for e in changes["items"]] == [
        ("active", "delinquent"),  # the close of Mar 1
        ("delinquent", "paid_off"),
        ("paid_off", "delinquent"),
    ]


async def test_a_payment_during_a_close_reckons_as_of_the_date_being_closed(
    client: httpx.AsyncClient,
) -> None:
    """The close of Mar 2 has reckoned the loan as of Mar 2 but not finished, so the business
    date is still Mar 1: a payment then must not set the loan back to Mar 1's arrears, which
    the rest of the close would leave in place."""
    w, loan = await three_month_loan(client)
    await w.post("/v1/close-runs", {"as_of": "2026-03-01"}, headers=w.admin, expect=201)
    assert (await w.get(f"/v1/loans/{loan['id']}"))["days_past_due"] == 14  # due Feb 15
    async with session_scope() as session:
        session.add(CloseRun(as_of=date(2026, 3, 2), status=CloseStatus.RUNNING, counts={},
                             steps={}, attempts=1, heartbeat_at=utc_now()))  # fmt: skip
    for step in ("late_fees", "delinquency"):
        await close_service.run_chunk(step, date(2026, 3, 2), None, None)
    await w.pay(loan["id"], "1.00", "2026-03-02")
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"]) == (15, "1-30")


async def test_a_payment_refused_for_what_later_payments_paid_says_so(
    client: httpx.AsyncClient,
) -> None:
    w, loan = await three_month_loan(client)
    await w.pay(loan["id"], "1100.00", "2026-02-20")  # the payoff is 1220.00 on Feb 20
    payments = f"/v1/loans/{loan['id']}/payments"
    # Within the payoff on Jan 16 (1212.00), but Feb 20's payment, replayed after it, would
    # then pay 1.00 more than the loan owes.
    refused = await w.post(payments, {"amount": "121.00", "received_on": "2026-01-16"}, expect=422)
    assert refused.json()["code"] == "amount_exceeds_payoff"
    assert refused.json()["detail"] == (
        "amount 121.00 on 2026-01-16 would overpay the loan by 1.00: the payments received "
        "after it already pay the rest"
    )


async def test_a_back_dated_payoff_takes_back_the_late_fees_it_forgives_in_the_ledger(
    client: httpx.AsyncClient,
) -> None:
    """The close charged installments 1 and 2 their late fees; a payoff reported afterwards,
    dated before either was due, shows they were never late: the replay withdraws the fees, on
    the night they were charged, and the ledger says so. Reversing the payoff owes them again,
    in the ledger too."""
    w = await world(client, grace_days=3, late_fee={"kind": "fixed", "amount": "25.00"})
    loan = await w.loan(principal="1000.00", term=3, disbursed_on="2026-09-15")
    await w.post("/v1/close-runs", {"as_of": "2026-12-03"}, headers=w.admin, expect=201)
    assert await fees_by_installment(w, loan["id"]) == (
        {1: "25.00", 2: "25.00", 3: "0.00"}, {1: "25.00", 2: "25.00", 3: "0.00"},
    )  # fmt: skip
    # 1000.00 of principal and the current period's 10.00 of interest.
    payoff = await w.pay(loan["id"], "1010.00", "2026-10-01")
    assert payoff["loan"]["status"] == "paid_off"
    shown, ledger = await fees_by_installment(w, loan["id"])
    assert shown == ledger == {1: "0.00", 2: "0.00", 3: "0.00"}
    items = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [(t["kind"], t["amount"], t["installment_seq"], t["effective_on"]) for t in items
            if t["kind"] == "late_fee_forgiven"] == [
        ("late_fee_forgiven", "25.00", 1, "2026-10-18"),
        ("late_fee_forgiven", "25.00", 2, "2026-11-18"),
    ]  # fmt: skip
    await assert_ledger_invariant(loan["id"])

    await w.post(f"/v1/payments/{payoff['id']}/reverse",
                 {"reason": "chargeback", "reversed_on": "2026-12-02"}, expect=200)  # fmt: skip
    shown, ledger = await fees_by_installment(w, loan["id"])
    assert shown == ledger == {1: "25.00", 2: "25.00", 3: "0.00"}
    items = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [(t["kind"], t["amount"], t["installment_seq"], t["effective_on"]) for t in items
            if t["kind"] == "late_fee_reinstated"] == [
        ("late_fee_reinstated", "25.00", 1, "2026-12-02"),
        ("late_fee_reinstated", "25.00", 2, "2026-12-02"),
    ]  # fmt: skip
    await assert_ledger_invariant(loan["id"])
    # Replaying again changes nothing: no row is written twice.
    await w.pay(loan["id"], "1.00", "2026-12-03")
    assert len((await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]) == len(items) + 1
    await assert_ledger_invariant(loan["id"])


async def test_a_reversed_payoff_owes_only_the_late_fees_a_close_charges_after_it(
    client: httpx.AsyncClient,
) -> None:
    """The close passes over a paid-off loan, so a reversal cannot bring back a fee that was
    never charged: the installments late all along are charged by the next close, once, each
    with its late_fee row; nothing is forgiven or owed again."""
    w = await world(client, grace_days=3, late_fee={"kind": "fixed", "amount": "25.00"})
    await w.post("/v1/close-runs", {"as_of": "2026-09-15"}, headers=w.admin, expect=201)
    loan = await w.loan(principal="1000.00", term=3, disbursed_on="2026-09-15")
    payoff = await w.pay(loan["id"], "1010.00", "2026-10-01")
    # Catches up every date to Dec 2 with the loan paid off: no fee.
    await w.post("/v1/close-runs", {"as_of": "2026-12-02"}, headers=w.admin, expect=201)
    await w.post(f"/v1/payments/{payoff['id']}/reverse",
                 {"reason": "nsf", "reversed_on": "2026-12-02"}, expect=200)  # fmt: skip
    assert await fees_by_installment(w, loan["id"]) == ({1: "0.00", 2: "0.00", 3: "0.00"},) * 2
    await w.post("/v1/close-runs", {"as_of": "2026-12-03"}, headers=w.admin, expect=201)
    items = (await w.get(f"/v1/loans/{loan['id']}/transactions"))["items"]
    assert [(t["kind"], t["installment_seq"], t["effective_on"]) for t in items] == [
        ("disbursement", None, "2026-09-15"),
        ("payment", None, "2026-10-01"),
        ("reversal", None, "2026-12-02"),
        ("late_fee", 1, "2026-12-03"),
        ("late_fee", 2, "2026-12-03"),
    ]
    shown, ledger = await fees_by_installment(w, loan["id"])
    assert shown == ledger == {1: "25.00", 2: "25.00", 3: "0.00"}
    await assert_ledger_invariant(loan["id"])


async def test_a_payoff_above_the_largest_principal_is_paid_in_one_payment(
    client: httpx.AsyncClient,
) -> None:
    """A loan owes more than its principal: the payoff of 99,000,000.00 lent at 36 % over 36
    months, booked three years back, was quoted at 162,852,344.36 and refused as a payment
    above the 100,000,000 maximum (a tester's)."""
    w = await world(client, annual_interest_rate="0.36", term_options=[36])
    borrower = await w.borrower()
    await w.client.patch(f"/v1/borrowers/{borrower['id']}", json={"credit_limit": "99000000.00"},
                         headers=w.admin)  # fmt: skip
    disbursed = clock.today() - relativedelta(years=3)
    loan = await w.loan(borrower["id"], principal="99000000.00", term=36,
                        disbursed_on=str(disbursed))  # fmt: skip
    payoff = loan["balances"]["payoff_amount"]
    assert Decimal(payoff) > Decimal("100000000.00")
    # Still bounded: ten times the largest principal.
    over = await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "1000000000.01"})
    assert over.json()["errors"] == [{"field": "amount", "message": "must not exceed 1000000000"}]
    paid = await w.pay(loan["id"], payoff)
    assert paid["amount"] == payoff
    assert (await w.get(f"/v1/loans/{loan['id']}"))["status"] == "paid_off"
