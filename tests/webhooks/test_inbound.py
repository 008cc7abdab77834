"""Signed notifications from payment gateways: debit results and chargebacks."""

import asyncio
import codecs
import json
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from app import clock
from app.db import session_scope, utc_now
from app.gateways.models import FailedDebit, Gateway, InboundNotification
from app.payments.models import Payment
from tests.factories import World, world
from tests.payments.test_routes import assert_ledger_invariant


async def gateway(w: World, name: str = "alipay") -> str:
    response = await w.post("/v1/gateways", {"name": name}, headers=w.admin, expect=201)
    secret = response.json()["secret"]
    assert secret.startswith("whsec_")
    return str(secret)


def signed(secret: str, body: Any, msg_id: str, at: float | None = None) -> tuple[
    bytes, dict[str, str]
]:  # fmt: skip
    return signed_raw(secret, json.dumps(body).encode(), msg_id, at)


def signed_raw(secret: str, raw: bytes, msg_id: str, at: float | None = None) -> tuple[
    bytes, dict[str, str]
]:  # fmt: skip
    timestamp = datetime.fromtimestamp(at or time.time())
    signature = Webhook(secret).sign(msg_id, timestamp, raw.decode())
    return raw, {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp.timestamp())),
                 "webhook-signature": signature, "content-type": "application/json"}  # fmt: skip


def notification(type_: str, loan_id: str, **data: Any) -> dict[str, Any]:
    return {"type": type_, "timestamp": "2026-02-10T08:00:00Z",
            "data": {"loan_id": loan_id, "external_ref": "dd-1", **data}}  # fmt: skip


async def post(client: httpx.AsyncClient, raw: bytes, headers: dict[str, str],
               to: str = "alipay") -> httpx.Response:  # fmt: skip
    return await client.post(f"/v1/inbound/gateways/{to}", content=raw, headers=headers)


async def debited(client: httpx.AsyncClient, secret: str, loan_id: str, amount: str,
                  received_on: str, external_ref: str = "dd-1",
                  to: str = "alipay") -> dict[str, Any]:  # fmt: skip
    """A payment the gateway collected (debit.succeeded)."""
    body = notification("debit.succeeded", loan_id, amount=amount, received_on=received_on,
                        external_ref=external_ref)  # fmt: skip
    raw, headers = signed(secret, body, f"msg_debit_{loan_id}_{external_ref}")
    response = await post(client, raw, headers, to)
    assert response.status_code == 200, response.text
    return dict(response.json()["result"])


async def count(model: type) -> int:
    async with session_scope() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_gateways_are_listed_a_page_at_a_time(client: httpx.AsyncClient) -> None:
    w = await world(client)
    for name in ("wechat", "alipay", "unionpay"):
        await gateway(w, name)
    first = await w.get("/v1/gateways?limit=2", headers=w.admin)
    assert [g["name"] for g in first["items"]] == ["alipay", "unionpay"]
    assert "secret" not in first["items"][0]
    rest = await w.get(f"/v1/gateways?limit=2&cursor={first['next_cursor']}", headers=w.admin)
    assert ([g["name"] for g in rest["items"]], rest["next_cursor"]) == (["wechat"], None)


async def test_a_succeeded_debit_records_a_payment_once(client: httpx.AsyncClient) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.succeeded", loan["id"], amount="106.62", received_on="2026-02-10")
    raw, headers = signed(secret, body, "msg_1")
    first = await post(client, raw, headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "processed"
    assert first.json()["result"]["channel"] == "auto_debit"
    again = await post(client, raw, headers)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["result"]["id"] == first.json()["result"]["id"]
    assert await count(Payment) == 1


async def test_a_byte_order_mark_before_the_notification_is_ignored(
    client: httpx.AsyncClient,
) -> None:
    """As every other route's JSON is read; the notification alone was refused 422 "not
    valid JSON", and its gateway retried it for days (a tester's)."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.succeeded", loan["id"], amount="10.00", received_on="2026-02-10")
    raw, headers = signed_raw(secret, codecs.BOM_UTF8 + json.dumps(body).encode(), "msg_bom")
    response = await post(client, raw, headers)
    assert (response.status_code, response.json()["status"]) == (200, "processed"), response.text
    assert (await post(client, raw, headers)).json()["status"] == "duplicate"
    assert await count(Payment) == 1


async def test_a_signed_debit_is_read_whatever_its_declared_media_type(
    client: httpx.AsyncClient,
) -> None:
    """The API's other bodies must be declared JSON (415 otherwise); a gateway's signed
    notification is read as JSON regardless: a payment must not be lost to a header."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    for n, declared in enumerate((None, "text/plain")):
        body = notification("debit.succeeded", loan["id"], amount="10.00",
                            received_on="2026-02-10", external_ref=f"dd-{n}")  # fmt: skip
        raw, headers = signed(secret, body, f"msg_{n}")
        del headers["content-type"]
        request = client.build_request("POST", "/v1/inbound/gateways/alipay", content=raw,
                                       headers=headers if declared is None
                                       else {**headers, "content-type": declared})  # fmt: skip
        assert request.headers.get("content-type") == declared
        response = await client.send(request)
        assert (response.status_code, response.json()["status"]) == (200, "processed")
    assert await count(Payment) == 2


async def test_a_failed_debit_is_recorded_with_an_event(client: httpx.AsyncClient) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    raw, headers = signed(secret, notification("debit.failed", loan["id"], amount="106.62",
                                               received_on="2026-02-10",
                                               reason="insufficient funds"), "msg_2")  # fmt: skip
    response = await post(client, raw, headers)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["reason"] == "insufficient funds"
    assert await count(FailedDebit) == 1
    events = (await client.get("/v1/events?type=payment.debit_failed",
                               headers=w.admin)).json()["items"]  # fmt: skip
    assert [e["data"]["loan_id"] for e in events] == [loan["id"]]
    # A gateway's reason is passed on, never refused (the failed debit would be lost): blank
    # is none, and a bell or an override goes on as an escape (a re-verifier's); a card
    # network's code sent as a number, or any other JSON value, goes on as its JSON text (a
    # tester's: "reason": 51 was refused 422, and the failure lost).
    reasons: list[tuple[object, str | None]] = [
        ("   ", None),
        ("no\u0007funds", "no\\x07funds"),
        ("a\u202eb", "a\\u202eb"),
        ("r" * 250, "r" * 200),
        (51, "51"),
        (5.1, "5.1"),
        (True, "true"),
        ({"code": "51", "text": "资金不足"}, '{"code":"51","text":"资金不足"}'),
        (["a"], '["a"]'),
        (None, None),
    ]
    for n, (reason, passed_on) in enumerate(reasons):
        body = notification("debit.failed", loan["id"], amount="1.00", reason=reason,
                            received_on="2026-02-11", external_ref=f"dd-r{n}")  # fmt: skip
        raw, headers = signed(secret, body, f"msg_r{n}")
        response = await post(client, raw, headers)
        assert response.status_code == 200, response.text
        assert response.json()["result"]["reason"] == passed_on


async def test_a_failed_debit_resent_under_another_id_counts_once(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.failed", loan["id"], amount="106.62", received_on="2026-02-10")
    first = await post(client, *signed(secret, body, "msg_first"))
    assert first.status_code == 200
    # The same failure from the gateway's log under a new id: a 409 was retried for days.
    resent = await post(client, *signed(secret, body, "msg_resent"))
    assert resent.status_code == 200, resent.text
    assert (resent.json()["status"], resent.json()["result"]) == (
        "duplicate", first.json()["result"],
    )  # fmt: skip
    # Another failure under its reference would count twice toward the rule.
    body = notification("debit.failed", loan["id"], amount="99.00", received_on="2026-02-10")
    other = await post(client, *signed(secret, body, "msg_other"))
    assert (other.status_code, other.json()["code"]) == (409, "failed_debit_already_recorded")
    assert await count(FailedDebit) == 1
    # Nothing is owed on a cancelled loan, so no failure to count either; answered 200, as a
    # 409 would be retried for days (a tester's), and its retry is a duplicate.
    cancelled = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    await w.post(f"/v1/loans/{cancelled['id']}/cancel", {}, expect=200)
    body = notification("debit.failed", cancelled["id"], amount="106.62", received_on="2026-02-10")
    ignored = await post(client, *signed(secret, body, "msg_cancelled"))
    assert ignored.status_code == 200, ignored.text
    assert (ignored.json()["status"], ignored.json()["result"]["loan_status"]) == (
        "ignored", "cancelled",
    )  # fmt: skip
    again = await post(client, *signed(secret, body, "msg_cancelled"))
    assert (again.json()["status"], again.json()["result"]) == (
        "duplicate", ignored.json()["result"],
    )  # fmt: skip
    assert await count(FailedDebit) == 1
    assert await count(InboundNotification) == 3  # the first, its resend and the ignored one
    debit_failed = await w.get("/v1/events?type=payment.debit_failed", headers=w.admin)
    assert len(debit_failed["items"]) == 1
    # Its date is still checked: an impossible one is the gateway's error to hear of.
    body = notification("debit.failed", cancelled["id"], amount="106.62", received_on="2031-01-01")
    dated = await post(client, *signed(secret, body, "msg_cancelled_future"))
    assert (dated.status_code, dated.json()["errors"][0]["field"]) == (422, "data.received_on")


async def test_money_a_gateway_collected_beyond_the_payoff_is_the_loans_credit_balance(
    client: httpx.AsyncClient,
) -> None:
    """An auto-debit races a payoff at the till: the gateway has the money, so the book takes
    it. What the loan does not owe is its credit balance, owed back to the borrower (a POS is
    still refused it); a chargeback takes it back, and a cancellation refunds the rest."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    quote = (await w.get(f"/v1/loans/{loan['id']}"))["balances"]["payoff_amount"]
    await w.pay(loan["id"], quote)
    # Dated before the payoff, it pays installment 1; the payoff's money then overpays.
    late = await debited(client, secret, loan["id"], "106.62", "2026-02-10", "dd-late")
    assert late["loan"]["status"] == "paid_off"
    assert late["loan"]["balances"]["credit_balance"] == "106.62"
    event = (await w.get("/v1/events?type=payment.received", headers=w.admin))["items"][-1]
    assert (event["data"]["payment_id"], event["data"]["credit_balance"]) == (late["id"], "106.62")
    await assert_ledger_invariant(loan["id"])
    refused = await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "1.00"})
    assert (refused.status_code, refused.json()["code"]) == (409, "loan_not_active")

    # On an open loan, the debit beyond the payoff pays it off and leaves the excess.
    other = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    quote = (await w.get(f"/v1/loans/{other['id']}"))["balances"]["payoff_amount"]
    over = str(Decimal(quote) + Decimal("10.00"))
    refused = await w.post(f"/v1/loans/{other['id']}/payments", {"amount": over})
    assert (refused.status_code, refused.json()["code"]) == (422, "amount_exceeds_payoff")
    paid = await debited(client, secret, other["id"], over, str(clock.today()), "dd-over")
    assert (paid["loan"]["status"], paid["loan"]["balances"]["credit_balance"]) == (
        "paid_off", "10.00",
    )  # fmt: skip
    await assert_ledger_invariant(other["id"])
    back = notification("payment.charged_back", other["id"], amount=over,
                        received_on=str(clock.today()), external_ref="dd-over")  # fmt: skip
    assert (await post(client, *signed(secret, back, "msg_back"))).status_code == 200
    got = await w.get(f"/v1/loans/{other['id']}")  # owing everything again, long past due
    assert (got["balances"]["payoff_amount"], got["balances"]["credit_balance"]) == (quote, "0.00")
    assert got["status"] != "paid_off"
    await assert_ledger_invariant(other["id"])

    # Cancelled, the first loan owes back every net payment: its refund and its credit.
    cancelled = (await w.post(f"/v1/loans/{loan['id']}/cancel", {}, expect=200)).json()
    owed = Decimal(cancelled["balances"]["refund_due"])
    owed += Decimal(cancelled["balances"]["credit_balance"])
    assert (owed, cancelled["balances"]["credit_balance"]) == (
        Decimal(quote) + Decimal("106.62"), "106.62",
    )  # fmt: skip
    event = (await w.get("/v1/events?type=loan.cancelled", headers=w.admin))["items"][-1]
    assert (event["data"]["refund_due"], event["data"]["credit_balance"]) == (
        cancelled["balances"]["refund_due"], "106.62",
    )  # fmt: skip


async def test_a_cancelled_loan_owes_back_only_money_that_stands(
    client: httpx.AsyncClient,
) -> None:
    """Goods returned: the refund stated at cancellation is every net payment. A gateway's
    debit after it is money taken that nothing is owed for, so it is credit balance (refused,
    the gateway would retry it for days and the book would not know of it); a chargeback or a
    bounce after it takes back what the payment paid from the refund (else the lender pays
    that money back twice: to the card network and to the borrower)."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    cash = await w.pay(loan["id"], "200.00", received_on="2026-02-05")
    await debited(client, secret, loan["id"], "150.00", "2026-02-10", "dd-before")
    cancelled = (await w.post(f"/v1/loans/{loan['id']}/cancel", {}, expect=200)).json()
    assert (cancelled["balances"]["refund_due"], cancelled["balances"]["credit_balance"]) == (
        "350.00", "0.00",
    )  # fmt: skip

    after = await debited(client, secret, loan["id"], "106.62", str(clock.today()), "dd-after")
    assert (after["status"], after["allocation"]) == ("applied", [])
    assert after["loan"]["status"] == "cancelled"
    assert (after["loan"]["balances"]["refund_due"], after["loan"]["balances"]["credit_balance"]) \
        == ("350.00", "106.62")  # fmt: skip
    event = (await w.get("/v1/events?type=payment.received", headers=w.admin))["items"][-1]
    assert (event["data"]["loan_status"], event["data"]["credit_balance"],
            event["data"]["refund_due"]) == ("cancelled", "106.62", "350.00")  # fmt: skip
    await assert_ledger_invariant(loan["id"])
    refused = await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": "1.00"})
    assert (refused.status_code, refused.json()["code"]) == (409, "loan_not_active")

    # The chargeback of a debit the refund counted takes its part of the refund back.
    back = notification("payment.charged_back", loan["id"], amount="150.00",
                        received_on=str(clock.today()), external_ref="dd-before")  # fmt: skip
    response = await post(client, *signed(secret, back, "msg_back_before"))
    assert response.status_code == 200, response.text
    got = await w.get(f"/v1/loans/{loan['id']}")
    balances = got["balances"]
    assert (got["status"], balances["refund_due"], balances["credit_balance"],
            balances["payoff_amount"]) == ("cancelled", "200.00", "106.62", "0.00")  # fmt: skip
    await assert_ledger_invariant(loan["id"])
    # The debit after the cancellation, charged back, leaves the credit balance.
    back = notification("payment.charged_back", loan["id"], amount="106.62",
                        received_on=str(clock.today()), external_ref="dd-after")  # fmt: skip
    assert (await post(client, *signed(secret, back, "msg_back_after"))).status_code == 200
    # The POS's own payment, bounced, leaves nothing owed back.
    await w.post(f"/v1/payments/{cash['id']}/reverse",
                 {"reason": "nsf", "reversed_on": "2026-02-06"}, expect=200)  # fmt: skip
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["balances"]["refund_due"], got["balances"]["credit_balance"]) == ("0.00", "0.00")
    await assert_ledger_invariant(loan["id"])
    schedule = await w.get(f"/v1/loans/{loan['id']}/schedule")
    assert {(i["paid"], i["status"]) for i in schedule["installments"]} == {("0.00", "pending")}
    event = (await w.get("/v1/events?type=payment.reversed", headers=w.admin))["items"][-1]
    assert (event["data"]["payment_id"], event["data"]["refund_due"]) == (cash["id"], "0.00")
    # The refund's ledger rows net to what is owed back: stated, then taken back.
    kinds: dict[str, Decimal] = {}
    for t in (await w.get(f"/v1/loans/{loan['id']}/transactions?limit=200"))["items"]:
        kinds[t["kind"]] = kinds.get(t["kind"], Decimal(0)) + Decimal(t["amount"])
    assert (kinds["refund"], kinds["refund_reduced"]) == (Decimal("350.00"), Decimal("350.00"))
    # Dated from the cancellation at the earliest: the refund was not owed before it.
    rows = (await w.get(f"/v1/loans/{loan['id']}/transactions?limit=200"))["items"]
    assert {t["effective_on"] for t in rows if t["kind"] == "refund_reduced"} == {
        cancelled["cancelled_on"],
    }  # fmt: skip


async def test_a_chargeback_reverses_the_named_payment(client: httpx.AsyncClient) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    paid = await debited(client, secret, loan["id"], "50.00", "2026-01-20")
    # The chargeback's date is its received_on: not before the payment it takes back.
    early = notification("payment.charged_back", loan["id"], amount="50.00",
                         received_on="2026-01-19")  # fmt: skip
    refused = await post(client, *signed(secret, early, "msg_early"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "data.received_on"
    body = notification("payment.charged_back", loan["id"], amount="50.00",
                        received_on="2026-02-03")  # fmt: skip
    response = await post(client, *signed(secret, body, "msg_3"))
    assert response.status_code == 200, response.text
    got = await w.get(f"/v1/payments/{paid['id']}")
    assert (got["status"], got["reversal_reason"]) == ("reversed", "chargeback")
    assert got["reversed_on"] == "2026-02-03"
    # Taken back already (resent under another id; a bounce an admin reversed first): nothing
    # more to take, answered 200, not a 409 the gateway would retry for days (a tester's).
    resent = await post(client, *signed(secret, body, "msg_3_resent"))
    assert resent.status_code == 200, resent.text
    assert (resent.json()["status"], resent.json()["result"]["status"]) == ("ignored", "reversed")
    assert (
        resent.json()["result"]["loan"]["balances"]
        == (await w.get(f"/v1/loans/{loan['id']}"))["balances"]
    )
    bounced = await debited(client, secret, loan["id"], "20.00", "2026-01-21", external_ref="dd-2")
    await w.post(f"/v1/payments/{bounced['id']}/reverse",
                 {"reason": "nsf", "reversed_on": "2026-01-25"}, expect=200)  # fmt: skip
    body = notification("payment.charged_back", loan["id"], amount="20.00",
                        received_on="2026-02-03", external_ref="dd-2")  # fmt: skip
    late = await post(client, *signed(secret, body, "msg_dd2_back"))
    assert late.status_code == 200, late.text
    assert (late.json()["status"], late.json()["result"]["reversal_reason"]) == ("ignored", "nsf")
    reversed_events = await w.get("/v1/events?type=payment.reversed", headers=w.admin)
    assert sorted(e["data"]["payment_id"] for e in reversed_events["items"]) == sorted(
        [paid["id"], bounced["id"]]
    )
    raw, headers = signed(secret, notification("payment.charged_back", loan["id"],
                                               external_ref="nope", amount="50.00",
                                               received_on="2026-02-03"), "msg_4")  # fmt: skip
    missing = await post(client, raw, headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "payment_not_found"
    # A malformed amount is refused as in a debit, whether or not the payment exists.
    raw, headers = signed(secret, notification("payment.charged_back", loan["id"],
                                               external_ref="nope", amount="50",
                                               received_on="2026-02-03"), "msg_5")  # fmt: skip
    malformed = await post(client, raw, headers)
    assert malformed.status_code == 422, malformed.text
    assert malformed.json()["errors"][0]["field"] == "data.amount"


async def test_bad_signatures_and_stale_timestamps_record_nothing(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.succeeded", loan["id"], amount="10.00")
    raw, headers = signed(secret, body, "msg_5")
    cases = [
        (raw.replace(b"10.00", b"99.00"), headers),  # tampered body
        (raw, {**headers, "webhook-signature": "v1,AAAA"}),
        (raw, {**headers, "webhook-signature": "garbage"}),
        (raw, {k: v for k, v in headers.items() if k != "webhook-id"}),
        signed(secret, body, "msg_6", at=time.time() - 600),  # outside the 5-minute window
        signed("whsec_" + "QUJD" * 8, body, "msg_7"),  # another secret
    ]
    for raw_body, hdrs in cases:
        response = await post(client, raw_body, hdrs)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_signature"
    # A gateway keying the HMAC with the whole "whsec_…" string is told what the key is; a
    # missing header or an old timestamp is no matter of the key.
    hint = "keyed with the base64-decoded part of the secret after 'whsec_'"
    assert hint in response.json()["detail"]  # the last case: another secret
    stale = await post(client, *cases[4])
    assert hint not in stale.json()["detail"]
    assert await count(Payment) == 0
    assert await count(InboundNotification) == 0
    # An unknown gateway fails as a wrong signature does: which names exist is not told.
    unknown = await post(client, raw, headers, "nobody")
    assert (unknown.status_code, unknown.json()["code"]) == (401, "invalid_signature")
    for raw_body, hdrs in cases[1:4]:
        known, unknown = [await post(client, raw_body, hdrs, to) for to in ("alipay", "nobody")]
        assert (unknown.status_code, unknown.json()) == (401, known.json())


async def test_unknown_loans_and_malformed_bodies(client: httpx.AsyncClient) -> None:
    w = await world(client)
    secret = await gateway(w)
    raw, headers = signed(secret, notification("debit.succeeded", "loan_nope", amount="1.00",
                                               received_on="2026-02-10"), "msg_8")  # fmt: skip
    response = await post(client, raw, headers)
    assert response.status_code == 404
    assert response.json()["code"] == "loan_not_found"
    for i, (body, fields) in enumerate([
        ({"type": "debit.exploded", "timestamp": "2026-02-10T08:00:00Z", "data": {}},
         {"type", "data.loan_id", "data.amount", "data.received_on", "data.external_ref"}),
        ({"type": "debit.succeeded", "timestamp": "2026-02-10T08:00:00Z",
          "data": {"loan_id": "x", "external_ref": "r", "amount": 10.5,
                   "received_on": "2026-02-10"}}, {"data.amount"}),
        ({"type": "debit.failed", "timestamp": "yesterday",
          "data": {"loan_id": "x", "external_ref": "r", "amount": "-1.00"}},
         {"timestamp", "data.amount", "data.received_on"}),
        ({"nothing": True}, {"type", "timestamp", "data"}),
        ([], {"body"}),
    ]):  # fmt: skip
        raw, headers = signed(secret, body, f"msg_bad_{i}")
        response = await post(client, raw, headers)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["code"] == "validation_error"
        assert {e["field"] for e in problem["errors"]} == fields, problem
        assert "pydantic" not in problem["detail"]
    response = await post(client, *signed_raw(secret, b"{not json", "msg_not_json"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body"
    assert await count(InboundNotification) == 0
    again = await w.post("/v1/gateways", {"name": "alipay"}, headers=w.admin)
    assert again.status_code == 409
    assert (await w.post("/v1/gateways", {"name": "x"})).status_code == 403


async def test_a_negative_or_too_large_amount_is_told_so_as_the_pos_is(
    client: httpx.AsyncClient,
) -> None:
    """Above the maximum by more digits than an amount has, or below zero, the amount was told
    it must be a decimal string "(JSON numbers are refused)", which it was; the POS's payment
    endpoint, which shares the field, had the same message."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    for i, (amount, message) in enumerate([
        ("99999999999999999.00", "is too large: more whole digits than any amount has "
                                 "(at most 15)"),
        # A payment may be ten times the largest principal: a payoff can be above it.
        ("1000000000.01", "must not exceed 1000000000"),
        ("-5.00", "must not be negative"),
        ("-9999999999999999.00", "must not be negative"),
        ("5,00", "must be a non-negative decimal string with the currency's decimal places "
                 "(JSON numbers are refused)"),
        # Told in the loan's currency's own form, not another's.
        ("5.0001", "CNY amounts have exactly 2 decimal places, such as '1299.00'"),
    ]):  # fmt: skip
        body = notification("debit.succeeded", loan["id"], amount=amount, received_on="2026-02-10")
        response = await post(client, *signed(secret, body, f"msg_amount_{i}"))
        assert response.status_code == 422, response.text
        assert [(e["field"], e["message"]) for e in response.json()["errors"]] == [
            ("data.amount", message)
        ], amount
        pos = await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": amount})
        assert [(e["field"], e["message"]) for e in pos.json()["errors"]] == [
            ("amount", message)
        ], amount
    assert await count(Payment) == 0
    assert await count(InboundNotification) == 0


async def test_a_currency_the_gateway_names_must_be_the_loans(client: httpx.AsyncClient) -> None:
    """SPEC's payload has no currency; a gateway that sends one had it ignored with its other
    fields, and 100.00 USD was recorded as 100.00 CNY (a tester's)."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    for i, type_ in enumerate(["debit.succeeded", "debit.failed", "payment.charged_back"]):
        body = notification(type_, loan["id"], amount="100.00", received_on="2026-02-10",
                            currency="USD")  # fmt: skip
        refused = await post(client, *signed(secret, body, f"msg_usd_{i}"))
        assert (refused.status_code, refused.json()["code"]) == (422, "currency_mismatch")
        assert [e["field"] for e in refused.json()["errors"]] == ["data.currency"]
    body = notification("debit.succeeded", loan["id"], amount="100.00", received_on="2026-02-10",
                        currency="cny")  # fmt: skip
    malformed = await post(client, *signed(secret, body, "msg_lower"))
    assert (malformed.status_code, malformed.json()["errors"][0]["field"]) == (
        422, "data.currency",
    )  # fmt: skip
    assert await count(Payment) == 0
    assert await count(FailedDebit) == 0
    assert await count(InboundNotification) == 0
    body = notification("debit.succeeded", loan["id"], amount="100.00", received_on="2026-02-10",
                        currency="CNY")  # fmt: skip
    named = await post(client, *signed(secret, body, "msg_cny"))
    assert (named.status_code, named.json()["status"]) == (200, "processed")
    assert await count(Payment) == 1


async def test_a_webhook_id_reused_for_another_body_is_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    first = notification("debit.succeeded", loan["id"], amount="10.00", received_on="2026-02-10")
    assert (await post(client, *signed(secret, first, "msg_same"))).status_code == 200
    other = notification("debit.succeeded", loan["id"], amount="25.00", received_on="2026-02-11")
    other["data"]["external_ref"] = "dd-2"
    response = await post(client, *signed(secret, other, "msg_same"))
    assert response.status_code == 422
    assert response.json()["code"] == "webhook_id_reused"
    assert await count(Payment) == 1
    # The gateway's retry of the first notification is still a duplicate, and the second
    # notification goes through under its own id.
    again = await post(client, *signed(secret, first, "msg_same"))
    assert again.json()["status"] == "duplicate"
    assert (await post(client, *signed(secret, other, "msg_other"))).json()["status"] == (
        "processed"
    )
    assert await count(Payment) == 2


async def test_a_failed_debit_must_fall_within_the_loans_life(client: httpx.AsyncClient) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    for i, day in enumerate(["2026-01-09", "2099-01-01"]):
        body = notification("debit.failed", loan["id"], amount="106.62", received_on=day)
        response = await post(client, *signed(secret, body, f"msg_day_{i}"))
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "data.received_on"
    body = notification("debit.failed", loan["id"], amount="106.62", received_on="2026-01-10")
    assert (await post(client, *signed(secret, body, "msg_day_ok"))).status_code == 200
    assert await count(FailedDebit) == 1


async def test_every_error_names_the_field_where_the_body_has_it(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    for i, (type_, data, field) in enumerate([
        ("debit.succeeded", {"amount": "1.005", "received_on": "2026-02-10"}, "data.amount"),
        ("debit.succeeded", {"amount": "0.00", "received_on": "2026-02-10"}, "data.amount"),
        ("debit.succeeded", {"amount": "10.00", "received_on": "2026-01-09"}, "data.received_on"),
        ("debit.failed", {"amount": "1.005", "received_on": "2026-02-10"}, "data.amount"),
        ("debit.failed", {"amount": "10.00", "received_on": "2026-01-09"}, "data.received_on"),
    ]):  # fmt: skip
        response = await post(client, *signed(secret, notification(type_, loan["id"], **data),
                                              f"msg_field_{i}"))  # fmt: skip
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == [field], (type_, data)
    assert await count(Payment) == 0
    assert await count(FailedDebit) == 0
    assert await count(InboundNotification) == 0


async def test_every_field_but_the_reason_is_required_whatever_the_type(
    client: httpx.AsyncClient,
) -> None:
    """A debit.failed without its amount was stored as a failed debit of 0.00, dated today,
    and counted toward the failed_debits flag. Each type needs SPEC.md's whole payload, and a
    refused notification is not recorded: corrected, it goes through."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    paid = await debited(client, secret, loan["id"], "50.00", "2026-01-20", "dd-paid")
    whole = {"amount": "50.00", "received_on": "2026-02-03", "external_ref": "dd-paid"}
    for type_ in ("debit.failed", "debit.succeeded", "payment.charged_back"):
        for field in ("loan_id", "amount", "received_on", "external_ref"):
            body = notification(type_, loan["id"], **whole)
            del body["data"][field]
            response = await post(client, *signed(secret, body, f"msg_{type_}_{field}"))
            assert response.status_code == 422, (type_, field, response.text)
            problem = response.json()
            assert problem["code"] == "validation_error"
            assert [e["field"] for e in problem["errors"]] == [f"data.{field}"], (type_, field)
    assert await count(Payment) == 1
    assert await count(FailedDebit) == 0
    assert await count(InboundNotification) == 1  # the debit's
    assert (await w.get(f"/v1/payments/{paid['id']}"))["status"] == "applied"
    # Corrected, under a new webhook-id (a field the gateway adds of its own is ignored).
    body = notification("debit.failed", loan["id"], amount="106.62", received_on="2026-02-10",
                        external_ref="f2", gateway_txn="tx-9")  # fmt: skip
    response = await post(client, *signed(secret, body, "msg_failed_corrected"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processed"
    result = response.json()["result"]
    assert (result["amount"], result["attempted_on"]) == ("106.62", "2026-02-10")
    assert await count(FailedDebit) == 1


async def test_the_timestamp_is_an_rfc_3339_string(client: httpx.AsyncClient) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    debit = notification("debit.succeeded", loan["id"], amount="10.00", received_on="2026-02-10")
    for i, timestamp in enumerate([1764633600, "20261203", "1764633600", True, "2026-12-03",
                                   "2026-12-03T08:00:00", "2026-12-03T08:00Z"]):  # fmt: skip
        body = {**debit, "timestamp": timestamp}
        response = await post(client, *signed(secret, body, f"msg_ts_{i}"))
        assert response.status_code == 422, (timestamp, response.text)
        assert [e["field"] for e in response.json()["errors"]] == ["timestamp"]
    assert await count(Payment) == 0
    body = {**debit, "timestamp": "2026-02-10T16:00:00+08:00"}
    response = await post(client, *signed(secret, body, "msg_ts_ok"))
    assert response.status_code == 200, response.text


async def test_an_overlong_webhook_id_is_refused_before_anything_is_written(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.succeeded", loan["id"], amount="10.00", received_on="2026-02-10")
    response = await post(client, *signed(secret, body, "m" * 256))
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["webhook-id"]
    assert await count(Payment) == 0
    assert await count(InboundNotification) == 0
    longest = await post(client, *signed(secret, body, "m" * 255))
    assert longest.status_code == 200, longest.text


async def test_a_chargeback_takes_back_the_whole_payment_or_nothing(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    paid = await debited(client, secret, loan["id"], "50.00", "2026-01-20")
    for i, (amount, code) in enumerate([
        ("10.00", "chargeback_amount_mismatch"),
        ("50.01", "chargeback_amount_mismatch"),
        ("1.005", "validation_error"),
        ("0.00", "validation_error"),
    ]):  # fmt: skip
        body = notification("payment.charged_back", loan["id"], amount=amount,
                            received_on="2026-02-03")  # fmt: skip
        refused = await post(client, *signed(secret, body, f"msg_cb_{i}"))
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert (problem["code"], problem["errors"][0]["field"]) == (code, "data.amount")
        if code == "chargeback_amount_mismatch":
            assert f"is {amount} but payment {paid['id']} is 50.00" in problem["detail"]
            assert "partial chargebacks are not supported" in problem["detail"]
    got = await w.get(f"/v1/payments/{paid['id']}")
    assert (got["status"], got["reversed_on"]) == ("applied", None)
    assert (await w.get("/v1/events?type=payment.reversed", headers=w.admin))["items"] == []
    assert await count(InboundNotification) == 1  # the debit's
    body = notification(
        "payment.charged_back", loan["id"], amount="50.00", received_on="2026-02-03"
    )
    response = await post(client, *signed(secret, body, "msg_cb_whole"))
    assert response.status_code == 200, response.text
    assert (await w.get(f"/v1/payments/{paid['id']}"))["status"] == "reversed"


async def test_a_gateway_charges_back_only_the_payments_it_collected(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    secret = await gateway(w)
    other = await gateway(w, "wechat")
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    at_the_till = await w.pay(loan["id"], "40.00", "2026-01-20", external_ref="pos-1")
    by_wechat = await debited(client, other, loan["id"], "50.00", "2026-01-21", "wx-1", "wechat")
    for i, (ref, amount) in enumerate([("pos-1", "40.00"), ("wx-1", "50.00")]):
        body = notification("payment.charged_back", loan["id"], external_ref=ref,
                            amount=amount, received_on="2026-02-03")  # fmt: skip
        refused = await post(client, *signed(secret, body, f"msg_not_mine_{i}"))
        assert refused.status_code == 404, refused.text
        problem = refused.json()
        assert (problem["code"], problem["detail"]) == (
            "payment_not_found",
            f"no payment with external_ref {ref} on loan {loan['id']}",
        )  # as for a payment that does not exist: nothing said of whose it is
    for paid in (at_the_till, by_wechat):
        assert (await w.get(f"/v1/payments/{paid['id']}"))["status"] == "applied"
    body = notification("payment.charged_back", loan["id"], external_ref="wx-1",
                        amount="50.00", received_on="2026-02-03")  # fmt: skip
    response = await post(client, *signed(other, body, "msg_mine"), to="wechat")
    assert response.status_code == 200, response.text
    assert (await w.get(f"/v1/payments/{by_wechat['id']}"))["status"] == "reversed"


async def test_a_debit_the_pos_reported_already_is_the_gateways_to_charge_back(
    client: httpx.AsyncClient,
) -> None:
    """The POS reports the payment at the till, the gateway its debit under the same
    reference: the same money. It was refused 409 (retried for days), and the gateway's
    chargeback then refused 404 as the POS's payment, so the money taken back stayed paid
    (a tester's). Now the debit is a duplicate and the payment the gateway's."""
    w = await world(client)
    secret = await gateway(w)
    other = await gateway(w, "wechat")
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    at_the_till = await w.pay(loan["id"], "100.00", "2026-01-20", external_ref="rcpt-9")
    # Another amount under the reference is another payment: still refused.
    body = notification("debit.succeeded", loan["id"], external_ref="rcpt-9", amount="99.00",
                        received_on="2026-01-20")  # fmt: skip
    conflict = await post(client, *signed(secret, body, "msg_other_amount"))
    assert (conflict.status_code, conflict.json()["code"]) == (409, "payment_already_recorded")
    body = notification("debit.succeeded", loan["id"], external_ref="rcpt-9", amount="100.00",
                        received_on="2026-01-21")  # fmt: skip
    debit = await post(client, *signed(secret, body, "msg_debit"))
    assert debit.status_code == 200, debit.text
    assert (debit.json()["status"], debit.json()["result"]["id"]) == (
        "duplicate", at_the_till["id"],
    )  # fmt: skip
    # With the loan as it stands, as a processed one has it (it was null: a tester's).
    standing = await w.get(f"/v1/loans/{loan['id']}")
    assert debit.json()["result"]["loan"] == {
        "status": standing["status"], "balances": standing["balances"],
    }  # fmt: skip
    assert await count(Payment) == 1
    # Resent under yet another id, it is the same payment; another gateway's is not.
    again = await post(client, *signed(secret, body, "msg_debit_resent"))
    assert (again.json()["status"], again.json()["result"]["id"]) == (
        "duplicate", at_the_till["id"],
    )  # fmt: skip
    by_wechat = await post(client, *signed(other, body, "msg_wechat"), to="wechat")
    assert (by_wechat.status_code, by_wechat.json()["code"]) == (409, "payment_already_recorded")
    body = notification("payment.charged_back", loan["id"], external_ref="rcpt-9",
                        amount="100.00", received_on="2026-02-03")  # fmt: skip
    charged_back = await post(client, *signed(secret, body, "msg_chargeback"))
    assert charged_back.status_code == 200, charged_back.text
    assert charged_back.json()["status"] == "processed"
    reversed_payment = await w.get(f"/v1/payments/{at_the_till['id']}")
    assert (reversed_payment["status"], reversed_payment["reversal_reason"]) == (
        "reversed", "chargeback",
    )  # fmt: skip
    # Reversed, it is no longer the debit's payment: a debit under its reference is refused.
    debit = await post(client, *signed(secret, body | {"type": "debit.succeeded"}, "msg_late"))
    assert (debit.status_code, debit.json()["code"]) == (409, "payment_already_recorded")


async def test_the_same_notification_serialised_again_is_a_duplicate(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.succeeded", loan["id"], amount="10.00", received_on="2026-02-10")
    first = await post(client, *signed(secret, body, "msg_json"))
    assert first.json()["status"] == "processed", first.text
    reserialised = json.dumps(
        {"data": dict(reversed(body["data"].items())), "timestamp": body["timestamp"],
         "type": body["type"]}, indent=2,
    ).encode()  # fmt: skip
    again = await post(client, *signed_raw(secret, reserialised, "msg_json"))
    assert again.status_code == 200, again.text
    assert (again.json()["status"], again.json()["result"]) == ("duplicate", first.json()["result"])
    assert await count(Payment) == 1


async def test_concurrent_deliveries_of_one_notification_apply_it_once(
    client: httpx.AsyncClient,
) -> None:
    """A sender that timed out retries at once: the twins are duplicates, not conflicts (a
    Standard Webhooks sender would take a 409 for a failure and keep retrying)."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.succeeded", loan["id"], amount="10.00", received_on="2026-02-10")
    raw, headers = signed(secret, body, "msg_twins")
    responses = await asyncio.gather(*[post(client, raw, headers) for _ in range(10)])
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["duplicate"] * 9 + ["processed"]
    assert {r.json()["result"]["id"] for r in responses} == {responses[0].json()["result"]["id"]}
    assert await count(Payment) == 1
    assert await count(InboundNotification) == 1


async def test_a_rotated_secret_replaces_the_old_one_after_the_overlap(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    old = await gateway(w)
    rotated = await client.post("/v1/gateways/alipay/rotate-secret", headers=w.admin)
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    new = rotated.json()["secret"]
    assert new.startswith("whsec_")
    assert new != old
    assert rotated.json()["previous_secret_expires_at"] is not None
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")

    def debit(n: int) -> dict[str, Any]:
        return notification("debit.succeeded", loan["id"], amount="10.00",
                            received_on="2026-02-10", external_ref=f"dd-rot-{n}")  # fmt: skip

    # During the overlap the gateway may sign with either while it switches.
    for n, secret in enumerate((new, old)):
        response = await post(client, *signed(secret, debit(n), f"msg_rot_{n}"))
        assert response.status_code == 200, response.text
    async with session_scope() as session:  # the overlap runs out
        await session.execute(
            update(Gateway).values(previous_secret_expires_at=utc_now() - timedelta(seconds=1))
        )
    refused = await post(client, *signed(old, debit(2), "msg_rot_2"))
    assert (refused.status_code, refused.json()["code"]) == (401, "invalid_signature")
    assert (await post(client, *signed(new, debit(2), "msg_rot_2"))).status_code == 200
    assert await count(Payment) == 3
    listed = (await w.get("/v1/gateways", headers=w.admin))["items"]
    assert [sorted(g) for g in listed] == [["created_at", "name", "previous_secret_expires_at"]]
    missing = await client.post("/v1/gateways/nobody/rotate-secret", headers=w.admin)
    assert (missing.status_code, missing.json()["code"]) == (404, "gateway_not_found")
    forbidden = await client.post("/v1/gateways/alipay/rotate-secret", headers=w.merchant)
    assert forbidden.status_code == 403
    # It takes no fields: an unknown one is refused, as on every body, and nothing rotates.
    unknown = await w.post("/v1/gateways/alipay/rotate-secret", {"x": 1}, headers=w.admin)
    assert (unknown.status_code, unknown.json()["errors"][0]["type"]) == (422, "extra_forbidden")
    assert (await post(client, *signed(new, debit(3), "msg_rot_3"))).status_code == 200
    empty = await w.post("/v1/gateways/alipay/rotate-secret", {}, headers=w.admin, expect=200)
    assert empty.json()["secret"] != new
    # A secret that leaked stops at once: kept for the overlap, a notification forged with it
    # was booked (a tester's).
    leaked = empty.json()["secret"]
    retired = await w.post("/v1/gateways/alipay/rotate-secret", {"retire_previous": True},
                           headers=w.admin, expect=200)  # fmt: skip
    forged = await post(client, *signed(leaked, debit(4), "msg_rot_4"))
    assert (forged.status_code, forged.json()["code"]) == (401, "invalid_signature")
    assert (
        await post(client, *signed(retired.json()["secret"], debit(4), "msg_rot_4"))
    ).status_code == 200
    not_a_bool = await w.post("/v1/gateways/alipay/rotate-secret", {"retire_previous": "yes"},
                              headers=w.admin, expect=422)  # fmt: skip
    assert not_a_bool.json()["errors"][0]["field"] == "retire_previous"


async def with_a_gateway_key(
    client: httpx.AsyncClient,
) -> tuple[World, str, dict[str, Any], str]:
    """A world, its gateway's secret, a loan of 1200.00 from Jan 10, and a gateway API key."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    gateway_key = (
        await w.post("/v1/api-keys", {"role": "gateway"}, headers=w.admin, expect=201)
    ).json()["key"]
    return w, secret, loan, str(gateway_key)


async def test_an_api_key_sent_beside_the_signature_must_be_a_gateway_key(
    client: httpx.AsyncClient,
) -> None:
    w, secret, loan, gateway_key = await with_a_gateway_key(client)
    keys = [("Bearer lw_not_a_key", 401), (w.merchant["Authorization"], 403),
            (f"Bearer {gateway_key}", 200)]  # fmt: skip
    for n, (authorization, status) in enumerate(keys):
        body = notification("debit.failed", loan["id"], amount="106.62",
                            received_on="2026-02-10", external_ref=f"f{n}")  # fmt: skip
        raw, headers = signed(secret, body, f"msg_key_{n}")
        response = await post(client, raw, {**headers, "Authorization": authorization})
        assert response.status_code == status, response.text
    assert await count(FailedDebit) == 1  # the refused left nothing


async def test_a_chargeback_before_its_debit_is_applied_when_resent_with_an_idempotency_key(
    client: httpx.AsyncClient,
) -> None:
    """The webhook-id is a notification's idempotency key. An Idempotency-Key beside a gateway
    key stored the chargeback's 404 (its debit not yet arrived) and replayed it to every
    retry, so the money stayed counted as paid (a tester's)."""
    w, secret, loan, gateway_key = await with_a_gateway_key(client)
    with_keys = {"Authorization": f"Bearer {gateway_key}", "Idempotency-Key": "cb-1"}
    chargeback = notification("payment.charged_back", loan["id"], amount="50.00",
                              received_on="2026-01-20")  # fmt: skip
    raw, headers = signed(secret, chargeback, "msg_cb_early")
    early = await post(client, raw, {**headers, **with_keys})
    assert (early.status_code, early.json()["code"]) == (404, "payment_not_found")
    paid = await debited(client, secret, loan["id"], "50.00", "2026-01-20")
    raw, headers = signed(secret, chargeback, "msg_cb_early")  # the gateway's retry
    retried = await post(client, raw, {**headers, **with_keys})
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert (await w.get(f"/v1/payments/{paid['id']}"))["status"] == "reversed"
    # Nor does a stored answer stand in for a signature.
    forged = await post(client, raw, {**headers, **with_keys, "webhook-signature": "v1,AAAA"})
    assert forged.status_code == 401, forged.text


async def test_a_notification_giving_a_webhook_header_twice_is_refused(
    client: httpx.AsyncClient,
) -> None:
    """Given twice, the last webhook-id was read: a notification could be told apart from its
    retries, or verified, by a copy other than the one a proxy in front reads (a tester's)."""
    w = await world(client)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", disbursed_on="2026-01-10")
    body = notification("debit.succeeded", loan["id"], amount="10.00", received_on="2026-02-10")
    raw, headers = signed(secret, body, "msg_twice")
    for name, other in (("webhook-id", "msg_other"), ("webhook-timestamp", "1"),
                        ("webhook-signature", "v1,AAAA")):  # fmt: skip
        twice = httpx.Headers([(other_name, value) for other_name, value in headers.items()])
        twice.update(httpx.Headers([(name, other), (name, headers[name])]))
        got = await client.post("/v1/inbound/gateways/alipay", content=raw, headers=twice)
        assert got.status_code == 422, (name, got.text)
        assert got.json()["errors"] == [
            {"field": name, "message": "given twice", "type": "repeated"}
        ]
    assert await count(Payment) == 0
    assert (await post(client, raw, headers)).json()["status"] == "processed"


async def test_a_failed_debit_before_the_closes_reach_its_loan_raises_nothing_ahead(
    client: httpx.AsyncClient,
) -> None:
    """Booked back-dated before the first close, and disbursed after the date it closed, the
    loan is reckoned as of today, long past due. A failed debit evaluated it as of today and
    raised five flags on a day the closes reach only later, so none could clear them: the
    closes then found it 5 days past due, its grade E (a tester's). The closes evaluate it."""
    w = await world(client, grace_days=3)
    secret = await gateway(w)
    loan = await w.loan(principal="1200.00", term=6, disbursed_on="2026-06-15")
    assert (await w.get(f"/v1/loans/{loan['id']}"))["days_past_due"] > 90
    await w.post("/v1/close-runs", {"as_of": "2026-06-14"}, headers=w.admin, expect=201)
    body = notification("debit.failed", loan["id"], amount="50.00", received_on="2026-07-15",
                        reason="nsf")  # fmt: skip
    failed = await post(client, *signed(secret, body, "msg_failed_ahead"))
    assert (failed.status_code, failed.json()["status"]) == (200, "processed"), failed.text
    flags = f"/v1/risk/flags?loan_id={loan['id']}&status=open"
    assert (await w.get(flags, headers=w.admin))["items"] == []
    await w.post("/v1/close-runs", {"as_of": "2026-07-20"}, headers=w.admin, expect=201)
    got = await w.get(f"/v1/loans/{loan['id']}")
    assert (got["days_past_due"], got["bucket"]) == (5, "1-30")
    raised = (await w.get(flags, headers=w.admin))["items"]
    assert {f["code"] for f in raised} == {"dpd_roll_forward"}
    assert all(f["raised_on"] <= "2026-07-20" for f in raised)
