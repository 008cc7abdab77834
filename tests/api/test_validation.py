"""Malformed input: always a 422 problem naming the field, never a 500, never a partial write."""

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Base
from tests.factories import world


async def row_counts() -> dict[str, int]:
    async with session_scope() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
            if table.name != "idempotency_record"
        }


LOAN_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("principal as a JSON number", {"principal": 1200.0}, "principal"),
    ("principal as an integer", {"principal": 1200}, "principal"),
    ("negative principal", {"principal": "-1.00"}, "principal"),
    ("zero principal", {"principal": "0.00"}, "principal"),
    ("three decimals for CNY", {"principal": "10.001"}, "principal"),
    ("one decimal for CNY", {"principal": "1200.5"}, "principal"),
    ("no decimals for CNY", {"principal": "1200"}, "principal"),
    ("absurd principal", {"principal": "999999999999999"}, "principal"),
    ("exponent notation", {"principal": "1e3"}, "principal"),
    ("comma decimal", {"principal": "12,00"}, "principal"),
    ("padded", {"principal": " 12.00"}, "principal"),
    ("leading zeros", {"principal": "0012.00"}, "principal"),
    ("NaN", {"principal": "NaN"}, "principal"),
    ("term as a string", {"term": "twelve"}, "term"),
    ("term zero", {"term": 0}, "term"),
    ("term too long", {"term": 600}, "term"),
    ("term under three months", {"term": 2}, "term"),  # SPEC: 3 to 36 monthly installments
    ("term over three years", {"term": 37}, "term"),
    ("bad date", {"disbursed_on": "2026-02-30"}, "disbursed_on"),
    ("future disbursement", {"disbursed_on": "2999-01-01"}, "disbursed_on"),
    # A month (and the longest first period) after it is past the last date there is.
    ("disbursed in the last month", {"disbursed_on": "9999-12-31"}, "disbursed_on"),
    ("due in the last month", {"disbursed_on": "9999-11-01", "first_due_date": "9999-12-01"},
     "disbursed_on"),
    ("disbursed in year 1", {"disbursed_on": "0001-01-01"}, "disbursed_on"),
    # Pydantic would read a number as seconds since 1970: 2025-12-02 here.
    ("disbursement as a number", {"disbursed_on": 1764633600}, "disbursed_on"),
    ("first due as digits", {"first_due_date": "1764633600"}, "first_due_date"),
    ("first due before disbursement", {"disbursed_on": "2026-01-10",
                                       "first_due_date": "2026-01-09"}, "first_due_date"),
    ("first due too far", {"disbursed_on": "2026-01-10",
                           "first_due_date": "2026-09-01"}, "first_due_date"),
    ("unknown field", {"colour": "red"}, "colour"),
    ("missing order ref", {"merchant_order_ref": None}, "merchant_order_ref"),
    ("empty order ref", {"merchant_order_ref": ""}, "merchant_order_ref"),
    ("borrower as a number", {"borrower_id": 5}, "borrower_id"),
    ("term as JSON true", {"term": True}, "term"),
    ("term as a string", {"term": "12"}, "term"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "override", "field"), LOAN_CASES, ids=[c[0] for c in LOAN_CASES])
async def test_malformed_loans_are_refused(
    client: httpx.AsyncClient, case: str, override: dict[str, Any], field: str
) -> None:
    w = await world(client)
    borrower = await w.borrower()
    before = await row_counts()
    body = {"borrower_id": borrower["id"], "product_code": w.product_code, "principal": "100.00",
            "term": 12, "merchant_order_ref": "ORD-1", **override}  # fmt: skip
    response = await w.post("/v1/loans", body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422
    assert problem["code"] == "validation_error"
    assert field in [e["field"] for e in problem["errors"]], problem
    assert await row_counts() == before


PAYMENT_CASES: list[dict[str, Any]] = [
    {"amount": 10},
    {"amount": 10.5},
    {"amount": "-5.00"},
    {"amount": "0"},
    {"amount": "1.234"},
    {"amount": ""},
    {"amount": None},
    {},
    {"amount": "10.00", "received_on": "yesterday"},
    {"amount": "10.00", "received_on": 1764633600},
    {"amount": "10.00", "received_on": "2026-01-10T00:00:00Z"},
    {"amount": "10.00", "channel": "POS TERMINAL!"},
    {"amount": "10.00", "external_ref": ""},
    {"amount": "10.00", "surprise": True},
]


@pytest.mark.parametrize("body", PAYMENT_CASES)
async def test_malformed_payments_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    w = await world(client)
    loan = await w.loan(principal="100.00", disbursed_on="2026-01-10")
    before = await row_counts()
    response = await w.post(f"/v1/loans/{loan['id']}/payments", body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"]
    assert await row_counts() == before


async def test_a_number_in_a_money_or_rate_field_is_told_they_travel_as_strings(
    client: httpx.AsyncClient,
) -> None:
    """The commonest mistake was the one told least: "Input should be a valid string"."""
    w = await world(client)
    loan = await w.loan(principal="100.00", disbursed_on="2026-01-10")
    kinds = [(10.0, "a JSON number"), (10, "a JSON number"), (True, "true or false"),
             (["1.00"], "an array"), (None, "null")]  # fmt: skip
    for amount, kind in kinds:
        paid = await w.post(f"/v1/loans/{loan['id']}/payments", {"amount": amount}, expect=422)
        assert paid.json()["errors"][0]["message"] == (
            f"must be a non-negative decimal string with the currency's decimal places, not {kind}"
        )
    product = {"code": "P-NUM", "name": "Numbers", "annual_interest_rate": 0.12,
               "amortization": "equal_installment", "term_options": [12]}  # fmt: skip
    refused = await w.post("/v1/products", product, headers=w.admin, expect=422)
    assert refused.json()["errors"] == [{
        "field": "annual_interest_rate",
        "message": "must be a decimal string such as '0.1299' with at most 6 decimals, not a "
        "JSON number",
        "type": "value_error",
    }]  # fmt: skip


async def test_non_json_and_wrong_shapes(client: httpx.AsyncClient) -> None:
    w = await world(client)
    before = await row_counts()
    # The last two are not even text: FastAPI would answer them 400 with no code of ours.
    for content in (b"not json", b"[]", b"null", b'"string"', b"{", b"\x80\x81", b'{"a": "\xc3"}'):
        response = await client.post(
            "/v1/borrowers", content=content,
            headers={**w.merchant, "content-type": "application/json"},
        )  # fmt: skip
        assert response.status_code == 422, content
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "validation_error", content
    response = await client.post(
        "/v1/borrowers", content=b'{"name": }',
        headers={**w.merchant, "content-type": "application/json"},
    )  # fmt: skip
    assert response.json()["errors"] == [
        {"field": "body", "message": "not valid JSON (at character 9)", "type": "json_invalid"}
    ]
    response = await w.post("/v1/payments/pay_x/reverse", {"reason": "bored"})
    assert response.status_code == 422
    assert await row_counts() == before


BAD_PRODUCTS: list[tuple[dict[str, Any], str]] = [
    ({"annual_interest_rate": 0.12}, "annual_interest_rate"),
    ({"annual_interest_rate": "12%"}, "annual_interest_rate"),
    ({"annual_interest_rate": "1.5"}, "annual_interest_rate"),
    ({"amortization": "balloon"}, "amortization"),
    ({"term_options": []}, "term_options"),
    ({"term_options": [12, 12]}, "term_options"),
    ({"term_options": [2, 12]}, "term_options"),  # SPEC: 3 to 36 monthly installments
    ({"term_options": [12, 37]}, "term_options"),
    ({"currency": "XXX"}, "currency"),
    ({"currency": "JPY", "installment_multiple_of": "1.50"}, "installment_multiple_of"),
    ({"late_fee": {"kind": "fixed"}}, "late_fee"),
    (
        {"late_fee": {"kind": "percent", "percent": "0", "cap_per_installment": "10.00"}},
        "late_fee.percent",
    ),
    ({"amortization": "interest_free", "annual_interest_rate": "0.10"}, "annual_interest_rate"),
    # Equal principal has no level installment to round: the setting would be ignored.
    (
        {"amortization": "equal_principal", "installment_multiple_of": "10.00"},
        "installment_multiple_of",
    ),
    ({"code": "has space"}, "code"),
    # Dot segments: clients normalise /v1/products/.. to /v1/, so the product is unreachable.
    ({"code": ".."}, "code"),
    ({"code": "."}, "code"),
    ({"name": "   "}, "name"),
    ({"term_options": ["12"]}, "term_options"),
    ({"grace_days": "3"}, "grace_days"),
    ({"grace_days": True}, "grace_days"),
]


async def product_refused(client: httpx.AsyncClient, override: dict[str, Any]) -> list[str]:
    """A product with ``override`` is refused 422, nothing stored: the fields it names."""
    w = await world(client)
    before = await row_counts()
    body = {"code": "NEW", "name": "n", "annual_interest_rate": "0.12",
            "amortization": "equal_installment", "term_options": [12], **override}  # fmt: skip
    response = await client.post("/v1/products", json=body, headers=w.admin)
    assert response.status_code == 422, response.text
    assert await row_counts() == before
    return [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize(("override", "field"), BAD_PRODUCTS)
async def test_malformed_products_are_refused(
    client: httpx.AsyncClient, override: dict[str, Any], field: str
) -> None:
    fields = await product_refused(client, override)
    assert any(f.startswith(field) for f in fields), fields


@pytest.mark.parametrize(("fee", "fields"), [
    ({"late_fee": {"kind": "fixed"}}, ["late_fee.amount"]),
    ({"late_fee": {"kind": "fixed", "amount": "5.00", "percent": "0.05"}}, ["late_fee.percent"]),
    ({"late_fee": {"kind": "percent", "percent": None, "cap_per_installment": "10.00"}},
     ["late_fee.percent"]),
    ({"late_fee": {"kind": "percent", "percent": "0.05", "amount": "1.00",
                   "cap_per_installment": "10.00"}}, ["late_fee.amount"]),
    # A percent fee grows with the installment: SPEC's late_fee has a cap, and without one a
    # 5 % fee on a 100,000.00 installment was 5,000.00 (a tester's).
    ({"late_fee": {"kind": "percent", "percent": "0.05"}}, ["late_fee.cap_per_installment"]),
    ({"origination_fee": {"kind": "percent", "percent": None}}, ["origination_fee.percent"]),
    ({"origination_fee": {"kind": "fixed", "percent": "0.01"}},
     ["origination_fee.amount", "origination_fee.percent"]),
])  # fmt: skip
async def test_a_fee_names_the_field_its_kind_needs(
    client: httpx.AsyncClient, fee: dict[str, Any], fields: list[str]
) -> None:
    """Told of the whole fee ("a percent fee gives 'percent' and no 'amount'", on `late_fee`),
    a client that sent no amount looked for one (a tester's)."""
    assert await product_refused(client, fee) == fields


async def test_one_answer_names_every_field_at_fault(client: httpx.AsyncClient) -> None:
    """A rate above 100 % and a repeated term were told only once the other fields were
    right, one request at a time (a tester's)."""
    w = await world(client)
    body = {"code": "", "name": "n", "annual_interest_rate": "2",
            "amortization": "equal_installment", "term_options": [12, 12]}  # fmt: skip
    response = await client.post("/v1/products", json=body, headers=w.admin)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [
        "code", "annual_interest_rate", "term_options",
    ]  # fmt: skip
    # A fee's fields are named with them: they waited for the rest to be right (a tester's).
    body |= {"late_fee": {"kind": "percent", "amount": "1.00"},
             "origination_fee": {"kind": "fixed"}}  # fmt: skip
    response = await client.post("/v1/products", json=body, headers=w.admin)
    assert [e["field"] for e in response.json()["errors"]] == [
        "code", "annual_interest_rate", "term_options", "late_fee.amount", "late_fee.percent",
        "late_fee.cap_per_installment", "origination_fee.amount",
    ]  # fmt: skip
    # So is a fixed fee's cap below its amount (a re-verifier's).
    body["late_fee"] = {"kind": "fixed", "amount": "20.00", "cap_per_installment": "15.00"}
    response = await client.post("/v1/products", json=body, headers=w.admin)
    assert [e["field"] for e in response.json()["errors"]] == [
        "code", "annual_interest_rate", "term_options", "late_fee.cap_per_installment",
        "origination_fee.amount",
    ]  # fmt: skip


async def test_one_answer_names_every_field_the_service_finds_at_fault(
    client: httpx.AsyncClient,
) -> None:
    """Well-shaped bodies whose amounts, dates and references are wrong for their currency,
    product or merchant: the checks after the body's shape stopped at the first, so a POS
    fixed one field per round trip (a tester's)."""
    w = await world(client)
    before = await row_counts()
    product = {"code": "MF1", "name": "x", "annual_interest_rate": "0.1",
               "amortization": "equal_installment", "term_options": [3],
               "installment_multiple_of": "1", "late_fee": {"kind": "fixed", "amount": "1"},
               "origination_fee": {"kind": "fixed", "amount": "3"}}  # fmt: skip
    response = await client.post("/v1/products", json=product, headers=w.admin)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [
        "installment_multiple_of", "late_fee.amount", "origination_fee.amount",
    ]  # fmt: skip

    borrower_id = (await w.borrower())["id"]
    before = await row_counts()
    response = await w.post("/v1/loans", {
        "borrower_id": borrower_id, "product_code": w.product_code, "principal": "5.5",
        "term": 5, "disbursed_on": "2099-01-01", "first_due_date": "2000-01-01",
        "merchant_order_ref": "mf",
    })  # fmt: skip
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [
        "term", "principal", "disbursed_on", "first_due_date",
    ]  # fmt: skip

    borrower = {"external_id": "e", "name": "n", "phone": "+8613800138000",
                "merchant_id": "mer_nope", "monthly_income": "1.5"}  # fmt: skip
    response = await client.post("/v1/borrowers", json=borrower, headers=w.admin)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["merchant_id", "monthly_income"]
    assert await row_counts() == before


async def test_malformed_borrowers_are_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    before = await row_counts()
    good = {"external_id": "c", "name": "A", "phone": "+8613800138000"}
    for override in ({"phone": "call me"}, {"monthly_income": 8000}, {"monthly_income": "-1"},
                     {"external_id": ""}, {"external_id": "  "}, {"external_id": " c-1"},
                     {"name": "x" * 300}, {"name": " \t "},
                     # Invisible or control characters alone are no name (a tester's)
                     {"name": "\u0007\u0008"}, {"name": "\u200b"}, {"name": "Li\u0007Wei"},
                     # Blank letters, a mark alone, a bidirectional override (a re-verifier's)
                     {"name": "\u3164"}, {"name": "\u2800"}, {"name": "\u034f"},
                     {"name": "\u0301"}, {"name": "Li\u202eieW"},
                     # Nor does a name run over lines (a tester's)
                     {"name": "Li\u2028Wei"}, {"name": "Li\u2029Wei"},
                     # Nor is a digit among dashes a phone number, nor a number with
                     # spaces after it another one
                     {"phone": "1----"}, {"phone": "1 () -"}, {"phone": "+8613800138000   "},
                     {"phone": "+1 (2) 3"}):  # fmt: skip
        response = await w.post("/v1/borrowers", {**good, **override})
        assert response.status_code == 422, (override, response.text)
    blank = await w.post("/v1/merchants", {"name": "  "}, headers=w.admin)
    assert (blank.status_code, blank.json()["errors"][0]["field"]) == (422, "name")
    assert await row_counts() == before


async def test_references_have_no_space_at_either_end(client: httpx.AsyncClient) -> None:
    """A borrower "dup-1 " was a second one beside "dup-1", as " dup-1" never could be; an
    order's and a payment's reference are the caller's references too."""
    w = await world(client)
    borrower = await w.borrower(external_id="dup-1")
    loan = await w.loan(borrower["id"], merchant_order_ref="ord-1")
    before = await row_counts()
    for path, body, field in (
        ("/v1/borrowers", {"external_id": "dup-1 ", "name": "A", "phone": "+8613800138000"},
         "external_id"),
        ("/v1/loans", {"borrower_id": borrower["id"], "product_code": w.product_code,
                       "principal": "1200.00", "term": 12, "merchant_order_ref": "ord-1 "},
         "merchant_order_ref"),
        (f"/v1/loans/{loan['id']}/payments", {"amount": "10.00", "external_ref": "pay-1 "},
         "external_ref"),
    ):  # fmt: skip
        for value in (body[field], f" {body[field].strip()}"):
            response = await w.post(path, {**body, field: value})
            assert response.status_code == 422, (path, value, response.text)
            assert [e["field"] for e in response.json()["errors"]] == [field], value
    assert await row_counts() == before
    inner = await w.borrower(external_id="dup 1")  # a space inside is part of the name
    assert inner["external_id"] == "dup 1"


async def test_dates_more_than_ten_years_back_are_refused(client: httpx.AsyncClient) -> None:
    """Year 1 once reached the close and overflowed its date arithmetic: the first close ever
    may be for any date, but not for one before any loan could have been disbursed."""
    w = await world(client)
    before = await row_counts()
    for path in ("/v1/close-runs", "/v1/risk/runs"):
        for as_of in ("0001-01-01", "1970-01-01"):
            response = await w.post(path, {"as_of": as_of}, headers=w.admin)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["errors"][0]["field"] == "as_of"
    assert await row_counts() == before


async def test_dates_in_queries_and_paths_are_text(client: httpx.AsyncClient) -> None:
    w = await world(client)
    for path, field in (
        ("/v1/portfolio/alerts?since=0", "since"),
        ("/v1/portfolio/roll-rates?from=1764633600", "from"),
        ("/v1/events?after=1764633600", "after"),
        ("/v1/close-runs/1764633600", "as_of"),
    ):
        response = await client.get(path, headers=w.admin)
        assert response.status_code == 422, path
        assert [e["field"] for e in response.json()["errors"]] == [field], path
    response = await w.post("/v1/close-runs", {"as_of": 1764633600}, headers=w.admin)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "as_of"


UNREADABLE_TEXT = [
    "   ",
    "\u200b",  # a zero-width space alone
    "\n\n",
    "paid\u0007",  # a bell
    "refund \u202eroF",  # a right-to-left override: reads otherwise than it is
]


@pytest.mark.parametrize("text", UNREADABLE_TEXT)
async def test_reasons_and_notes_must_read_as_they_are(
    client: httpx.AsyncClient, text: str
) -> None:
    """A cancellation's reason, a promise's note and a decision's note are shown to people, as
    relief's reason is: nothing visible, or a control character, or an override was stored
    as sent and went to subscribers (a tester's)."""
    w = await world(client)
    loan_id = (await w.loan())["id"]
    asked = await w.post(f"/v1/loans/{loan_id}/restructures",
                         {"kind": "term_extension", "reason": "lost job", "months": 1},
                         w.admin, 201)  # fmt: skip
    before = await row_counts()
    for path, body in [
        (f"/v1/loans/{loan_id}/cancel", {"reason": text}),
        (f"/v1/loans/{loan_id}/promises", {"amount": "10.00", "due_on": "2026-12-20",
                                           "note": text}),
        (f"/v1/restructures/{asked.json()['id']}/reject", {"note": text}),
        (f"/v1/loans/{loan_id}/restructures",
         {"kind": "term_extension", "reason": text, "months": 1}),
    ]:  # fmt: skip
        response = await w.post(path, body, w.admin)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["errors"][0]["field"] in ("reason", "note"), response.text
    assert await row_counts() == before
    # Lines and tabs are text.
    note = "Called twice.\n\tAgreed to pay on the 20th."
    rejected = await w.post(f"/v1/restructures/{asked.json()['id']}/reject", {"note": note},
                            w.admin, 200)  # fmt: skip
    assert rejected.json()["decision_note"] == note


async def test_an_answer_names_the_first_hundred_fields_at_fault(client: httpx.AsyncClient) -> None:
    """A 1 MiB body of 60,000 unknown keys was answered with 7.6 MB naming each key twice (a
    tester's): the answer lists the first hundred and says how many more there were."""
    w = await world(client)
    body = {"name": "Acme", **{f"k{n}": 1 for n in range(150)}}
    response = await client.post("/v1/merchants", json=body, headers=w.admin)
    assert response.status_code == 422
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == [f"k{n}" for n in range(100)]
    assert problem["detail"].startswith("k0: Extra inputs are not permitted; k1: ")
    assert problem["detail"].endswith("; and 140 more (100 in errors)")


@pytest.mark.parametrize("text", ["   ", "a\u0007b", "a\u202eb"])
async def test_descriptions_must_read_as_they_are(client: httpx.AsyncClient, text: str) -> None:
    """An API key's and a webhook endpoint's description are read by people, as notes are
    (a re-verifier's)."""
    w = await world(client)
    before = await row_counts()
    for path, body in [
        ("/v1/api-keys", {"role": "dashboard", "description": text}),
        ("/v1/webhook-endpoints", {"url": "https://hooks.example.com/lw", "description": text}),
    ]:
        response = await w.post(path, body, w.admin)
        assert response.status_code == 422, (path, response.text)
        assert [e["field"] for e in response.json()["errors"]] == ["description"], response.text
    assert await row_counts() == before
