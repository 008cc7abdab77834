"""The close after yesterday's evaluates only the loans the night may have changed
(``risk.service._may_change_overnight``); the others keep yesterday's flags and scores. On
randomized portfolios closed night after night, with payments, reversals and failed debits
arriving between the closes as they do in production, the flags and scores the nights leave
are exactly those of evaluating every loan from scratch."""

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from standardwebhooks import Webhook

from app.close import service as close_service
from app.db import session_scope
from app.gateways import service as gateways_service
from app.loans.errors import LoanNotActive
from app.loans.models import Loan
from app.payments import service as payments_service
from app.payments.errors import AmountExceedsPayoff
from app.payments.models import Payment, PaymentStatus
from app.risk import service as risk
from app.risk.models import RiskFlag
from tests.close.test_batch_agrees import ADMIN, START, borrowers_agree, build, reset
from tests.close.test_batch_agrees import loan as loan_spec
from tests.factories import world
from tests.risk.test_flags import close, flags, loan, setup, six_month_loan

# (night, which loan, what happens, how much: percent of the principal / 12)
happening = st.tuples(
    st.integers(1, 10),
    st.integers(0, 7),
    st.sampled_from(["payment", "reversal", "failed_debit"]),
    st.integers(1, 150),
)


async def close_in_process(as_of: date) -> None:
    async with session_scope() as session:
        dates = await close_service.plan_close(session, as_of=as_of)
    await close_service.run_dates_in_process(dates)


async def happen(
    kind: str, loan_id: str, principal: int, percent: int, on: date, gateway_secret: str
) -> None:
    if kind == "payment":
        try:
            async with session_scope() as session:
                await payments_service.record_payment(
                    session, ADMIN, loan_id=loan_id, received_on=on, channel="pos",
                    amount=f"{max(principal * percent // 1200, 1)}.00", external_ref=None,
                )  # fmt: skip
        except (AmountExceedsPayoff, LoanNotActive):
            pass
    elif kind == "reversal":
        async with session_scope() as session:
            payment_id = await session.scalar(
                select(Payment.id)
                .where(
                    Payment.loan_id == loan_id,
                    Payment.status == PaymentStatus.APPLIED,
                    Payment.received_on <= on,
                )
                .order_by(Payment.received_on.desc(), Payment.id.desc())
                .limit(1)
            )
            if payment_id is not None:
                # Dated in the simulation: its payment_reversal window runs out nights later.
                await payments_service.reverse_payment(
                    session, ADMIN, payment_id=payment_id, reason="nsf", reversed_on=on
                )
    else:
        body, headers = debit_failure(gateway_secret, loan_id, f"{on}-{percent}", on)
        try:
            async with session_scope() as session:
                await gateways_service.receive(
                    session, gateway_name="bank", body=body, headers=headers
                )
        except LoanNotActive:  # paid off by an earlier payment: no debit to fail
            pass


def debit_failure(secret: str, loan_id: str, ref: str, on: date) -> tuple[bytes, dict[str, str]]:
    """A gateway's signed ``debit.failed`` notification."""
    body = json.dumps({
        "type": "debit.failed", "timestamp": datetime.now(UTC).isoformat(),
        "data": {"loan_id": loan_id, "amount": "10.00", "received_on": on.isoformat(),
                 "external_ref": f"d-{ref}", "reason": "nsf"},
    })  # fmt: skip
    message_id, now = f"msg_{loan_id}_{ref}", datetime.now(UTC)
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }
    return body.encode(), headers


async def flags_and_scores() -> tuple[set[tuple[Any, ...]], dict[str, tuple[int, str]]]:
    async with session_scope() as session:
        flags = set(
            (await session.execute(
                select(RiskFlag.loan_id, RiskFlag.code, RiskFlag.severity, RiskFlag.status)
            )).all()
        )  # fmt: skip
        scores = {
            row.id: (row.risk_score, row.risk_grade)
            for row in await session.execute(select(Loan.id, Loan.risk_score, Loan.risk_grade))
        }
    return flags, scores


# Every night is a whole close: a few examples of up to ten nights keep the suite's time.
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    portfolio=st.lists(loan_spec, min_size=1, max_size=6),
    first_close=st.integers(20, 300),
    nights=st.integers(1, 10),
    happenings=st.lists(happening, max_size=8),
)
async def test_nights_after_the_first_leave_what_a_full_evaluation_finds(
    portfolio: list[dict[str, Any]],
    first_close: int,
    nights: int,
    happenings: list[tuple[int, int, str, int]],
) -> None:
    await reset()
    await build(portfolio)
    async with session_scope() as session:
        gateway = await gateways_service.register(session, ADMIN, name="bank")
        secret = gateway.secret
        built = dict((await session.execute(select(Loan.merchant_order_ref, Loan.id))).all())
    loan_ids = [built[f"o{n}"] for n in range(len(portfolio))]
    first = START + timedelta(days=first_close)
    await close_in_process(first)

    for night in range(1, nights + 1):
        today = first + timedelta(days=night)
        for when, which, kind, percent in happenings:
            n = which % len(loan_ids)
            if when == night and today >= START + timedelta(days=portfolio[n]["disbursed"]):
                principal = portfolio[n]["principal"]
                await happen(kind, loan_ids[n], principal, percent, today, secret)
        async with session_scope() as session:
            assert await risk._evaluated_yesterday(session, today)
        await close_in_process(today)

    last = first + timedelta(days=nights)
    flags, scores = await flags_and_scores()
    # Every open loan evaluated afresh, in one batch and one by one: nothing to change.
    async with session_scope() as session:
        counts = await risk.evaluate_loans(session, last)
        assert counts["flags_raised"] == counts["flags_cleared"] == 0, counts
        assert counts["flags_changed"] == 0, counts
        for loan_id in loan_ids:
            counts = await risk.evaluate_loans(session, last, loan_id=loan_id)
            assert counts["flags_raised"] == counts["flags_cleared"] == 0, (loan_id, counts)
            assert counts["flags_changed"] == 0, (loan_id, counts)
    assert await flags_and_scores() == (flags, scores)
    # The borrowers the nights and the payments between them graded: as a full re-grade finds.
    await borrowers_agree(last)


# What only the passing of the night reveals, through the API: the closes below run one date
# after another (a request closes every date since the business date), so every close after
# the first evaluates only the loans the night may have changed.


async def test_a_partial_period_that_ends_its_grace_tonight_is_seen_tonight(
    client: httpx.AsyncClient,
) -> None:
    w = await setup(client, first_close="2026-02-04")
    loan_id = await six_month_loan(w)  # 212.00, 210.00, 208.00, 206.00, ... due on the 10th
    # Paying ahead then little: never a day past due, but periods 2 and 4 each bring under
    # 80 % of their installment.
    for day, amount in [("02-05", "322.00"), ("03-05", "100.00"), ("04-05", "314.00"),
                        ("05-05", "100.00")]:  # fmt: skip
        await close(w, f"2026-{day}")
        await w.pay(loan_id, amount, f"2026-{day}")
    await close(w, "2026-05-13")  # period 4 still within its grace: one partial of 1, 2, 3
    assert "partial_payments" not in await flags(w, loan_id)
    assert (await w.get(f"/v1/loans/{loan_id}"))["days_past_due"] == 0
    assert (await w.get(f"/v1/loans/{loan_id}/risk", headers=w.admin))["score"] == 1000
    await close(w, "2026-05-14")  # periods 2, 3, 4: two partial, seen by tonight's close
    flag = (await flags(w, loan_id))["partial_payments"]
    assert (flag["raised_on"], flag["evidence"]["partial_periods"]) == ("2026-05-14", 2)


async def test_debits_failing_after_the_business_date_count_from_their_night(
    client: httpx.AsyncClient,
) -> None:
    w = await setup(client, first_close="2026-01-10")
    loan_id = await loan(w)
    secret = (await w.post("/v1/gateways", {"name": "unionpay"}, headers=w.admin,
                           expect=201)).json()["secret"]  # fmt: skip
    for n in (1, 2):
        body, headers = debit_failure(secret, loan_id, str(n), date(2026, 1, 11))
        response = await client.post("/v1/inbound/gateways/unionpay", content=body,
                                     headers=headers)  # fmt: skip
        assert response.status_code == 200, response.text
    # Evaluated at once as of their date, the next to close, not the business date before it.
    flag = (await flags(w, loan_id))["failed_debits"]
    assert (flag["raised_on"], flag["evidence"]["failed_debits"]) == ("2026-01-11", 2)
    await close(w, "2026-01-11")
    assert (await flags(w, loan_id))["failed_debits"] == flag
    raised = await w.get("/v1/events?type=risk.flag_raised", headers=w.admin)
    assert [e["data"]["code"] for e in raised["items"]] == ["failed_debits"]


async def test_reversals_dated_after_the_business_date_count_from_their_night(
    client: httpx.AsyncClient,
) -> None:
    """As a failed debit: a reversal dated the day after the business date is evaluated at
    once as of that day, not the business date before it, when it had not happened (its
    payment_reversal flag, and the arrears it leaves, would be dated a day early)."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3)  # fmt: skip
    loan_id = (await w.loan(principal="1200.00", term=3, disbursed_on="2026-08-15"))["id"]
    await close(w, "2026-09-10")
    paid = await w.pay(loan_id, "100.00", "2026-09-05")
    await w.post(f"/v1/payments/{paid['id']}/reverse",
                 {"reason": "nsf", "reversed_on": "2026-09-11"}, expect=200)  # fmt: skip
    flag = (await flags(w, loan_id))["payment_reversal"]
    assert (flag["raised_on"], flag["severity"]) == ("2026-09-11", "medium")
    assert flag["evidence"]["latest_reversed_on"] == "2026-09-11"
    loan = await w.get(f"/v1/loans/{loan_id}")
    assert loan["delinquency_as_of"] == "2026-09-11"
    # A risk run of the business date leaves the flag to its own date's close.
    await w.post("/v1/risk/runs", {"as_of": "2026-09-10"}, headers=w.admin, expect=201)
    assert (await flags(w, loan_id))["payment_reversal"] == flag
    await close(w, "2026-09-11")
    assert (await flags(w, loan_id))["payment_reversal"] == flag
