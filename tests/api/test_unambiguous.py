"""U+0000 anywhere in a request, or a key named twice in one object of its body: a 422 problem
and nothing stored, on PostgreSQL as on SQLite (tests/test_embedded.py fuzzes the embedded
server)."""

import gzip
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import func, select
from standardwebhooks import Webhook

from app.api.idempotency import IdempotencyRecord
from app.api.unambiguous import MAX_DEPTH, carries_nul, duplicate_key, nests_too_deeply
from app.db import session_scope
from tests.api.test_validation import row_counts
from tests.factories import world


@given(st.recursive(st.text() | st.integers() | st.none(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))  # fmt: skip
def test_a_json_bodycarries_nul_exactly_when_one_of_its_strings_does(value: object) -> None:
    def strings(v: object) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, list):
            return [s for item in v for s in strings(item)]
        if isinstance(v, dict):
            return [s for key, item in v.items() for s in [key, *strings(item)]]
        return []

    expected = any("\x00" in s for s in strings(value))
    for ensure_ascii in (True, False):
        body = json.dumps(value, ensure_ascii=ensure_ascii).encode()
        assert carries_nul(body) == expected, body


async def test_nul_in_a_body_query_or_path_is_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    before = await row_counts()
    borrower = {"external_id": "c\u00001", "name": "Li Wei", "phone": "+8613800138000"}
    for headers in (w.merchant, {**w.merchant, "Idempotency-Key": "nul-1"}):
        response = await client.post("/v1/borrowers", json=borrower, headers=headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "body"
    for path, where in (("/v1/borrowers?external_id=a%00b", "query"),
                        ("/v1/loans/loan_%00x", "path")):  # fmt: skip
        response = await client.get(path, headers=w.merchant)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == where
    assert await row_counts() == before
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0

    # A backslash followed by "u0000" is ordinary text.
    literal = {**borrower, "external_id": "c1", "name": "Li \\u0000 Wei"}
    created = await client.post("/v1/borrowers", json=literal, headers=w.merchant)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "Li \\u0000 Wei"


async def test_a_body_to_no_route_is_answered_for_the_route(client: httpx.AsyncClient) -> None:
    """No such path is 404 and no such method 405, whatever the body holds: a gzip body to an
    unknown path was a 422 for holding U+0000 (a tester's)."""
    w = await world(client)
    json_headers = {**w.admin, "Content-Type": "application/json"}
    for method, path, status in (("POST", "/v1/nothing-here", 404), ("PUT", "/v1/loans", 405)):
        for body in (gzip.compress(b'{"a": 1}'), b'{"a": 1, "a": 2}', b'{"a": "\\u0000"}'):
            response = await client.request(method, path, content=body, headers=json_headers)
            assert response.status_code == status, (method, path, body, response.text)
            assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be"])  # fmt: skip
async def test_a_body_in_utf_16_or_32_is_refused_as_not_utf_8(
    client: httpx.AsyncClient, encoding: str
) -> None:
    """RFC 8259: JSON between systems is UTF-8. A body in UTF-16 or 32 was told it held the
    NUL character, which its sender never put there (a tester's)."""
    w = await world(client)
    before = await row_counts()
    borrower = {"external_id": "c1", "name": "李伟", "phone": "+8613800138000"}
    body = f" {json.dumps(borrower, ensure_ascii=False)}".encode(encoding)
    headers = {**w.merchant, "content-type": "application/json"}
    response = await client.post("/v1/borrowers", content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0] == {
        "field": "body", "message": f"in {encoding[:6].upper()}, not UTF-8",
        "type": "json_invalid",
    }  # fmt: skip
    assert await row_counts() == before


@given(st.recursive(st.text() | st.integers() | st.none(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))  # fmt: skip
def test_a_body_has_a_duplicate_key_only_when_an_object_repeats_one(value: object) -> None:
    body = json.dumps(value)
    assert duplicate_key(body.encode()) is None
    # The same object once more, inside an object that names "k" twice.
    repeated = f'{{"k": {body}, "other": 1, "k": {body}}}'
    assert duplicate_key(repeated.encode()) == "k"
    # Named by its path, as a number too long to read is; the first in the body's order.
    within = f'{{"k": {body}, "items": [{body}, {{"a": 1, "b": {repeated}, "a": 2}}]}}'
    assert duplicate_key(within.encode()) == "items.1.a"


async def test_a_key_given_twice_is_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan()
    before = await row_counts()
    nested = '{"amount": "1.00", "x": {"a": 1, "a": 2}}'
    for body in ('{"amount": "1.00", "amount": "2.00"}', nested):
        for headers in (w.merchant, {**w.merchant, "Idempotency-Key": "twice-1"}):
            response = await client.post(
                f"/v1/loans/{loan['id']}/payments", content=body,
                headers={**headers, "content-type": "application/json"},
            )  # fmt: skip
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["type"] == "duplicate_key"
    assert await row_counts() == before
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0


async def test_a_key_given_twice_is_named_by_its_path_whatever_it_holds(
    client: httpx.AsyncClient,
) -> None:
    """A key repeated within a list was named bare ("due_on"); one holding a lone surrogate,
    which JSON's escapes allow and UTF-8 cannot encode, was a 500 to a caller with no key
    (a tester's), as was a number too long to read under such a key."""
    w = await world(client)
    loan = await w.loan()
    before = await row_counts()
    long = "9" * 5000
    for path, headers, body, field in (
        (f"/v1/loans/{loan['id']}/restructures", w.merchant,
         '{"kind": "repayment_plan", "installments": [{"due_on": "2027-01-01"}, '
         '{"due_on": "2027-02-01", "due_on": "2027-03-01"}]}', "installments.1.due_on"),
        ("/v1/merchants", {}, '{"\\ud800": 1, "\\ud800": 2}', "\ud800"),
        ("/v1/inbound/gateways/alipay", {"webhook-id": "x", "webhook-timestamp": "1",
                                         "webhook-signature": "v1,AA"},
         '{"a\\udfff": 1, "a\\udfff": 2}', "a\udfff"),
        (f"/v1/loans/{loan['id']}/payments", w.merchant, '{"\\ud800": ' + long + "}", "\ud800"),
    ):  # fmt: skip
        response = await client.post(
            path, content=body, headers={**headers, "content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
        # Escaped as JSON escapes it, the bytes UTF-8.
        assert field.isascii() or b'"field":"' + field.encode(errors="backslashreplace") in (
            response.content
        )
    assert await row_counts() == before


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


nested = st.recursive(
    st.text(alphabet='[]{}\\"ab') | st.integers() | st.none(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=200,
)


@given(nested, st.integers(min_value=0, max_value=2 * MAX_DEPTH))
def test_a_body_nests_too_deeply_exactly_when_its_depth_passes_the_bound(
    value: object, wrapped: int
) -> None:
    # Wrapped in arrays and objects by turns, to reach past the bound; its strings hold
    # brackets, quotes and backslashes that must not count.
    for level in range(wrapped):
        value = [value] if level % 2 else {"k[": value}
    body = json.dumps(value, indent=1 if wrapped % 3 else None).encode()
    assert nests_too_deeply(body) == (depth(value) > MAX_DEPTH)


pieces = st.lists(st.sampled_from(["[", '{"k":', "]", "}", '"', "\\", '\\"', ",", "1", " "]))


deep = st.sampled_from([MAX_DEPTH, MAX_DEPTH + 1, 1000, 5000]) | st.integers(0, 5000)


@given(pieces, deep, st.sampled_from(["[", '{"k":']), pieces)
@example([], 5000, "[", [])
@example([], 5000, '{"k":', ["[]"])
@example(['"'], 5000, "[", ['"'])
def test_a_body_the_depth_check_passes_never_makes_the_parser_recurse_too_deep(
    before: list[str], opened: int, opener: str, after: list[str]
) -> None:
    """JSON or not, paired or not, strings closed or not: what passes is parsed without a
    RecursionError (brackets opened a thousand times and never closed were a 500)."""
    body = "".join([*before, opener * opened, *after]).encode()
    if not nests_too_deeply(body):
        duplicate_key(body)


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 950, 5000])
async def test_a_body_nested_too_deeply_is_refused(client: httpx.AsyncClient, levels: int) -> None:
    """Python's parser recurses once per level: a body the middleware could still read failed
    a later parse deeper in the route, a 500 for a signed notification 950 deep (a tester's),
    "not valid JSON" for a payment. A fixed bound, with or without a key."""
    w = await world(client)
    loan = await w.loan()
    gateway = await w.post("/v1/gateways", {"name": "alipay"}, headers=w.admin, expect=201)
    notification = '{"type": "debit.failed", "x": ' + "[" * levels + "]" * levels + "}"
    signed = Webhook(gateway.json()["secret"]).sign("msg_deep", datetime.now(UTC), notification)
    before = await row_counts()
    inner = "[" * (levels - 1) + "]" * (levels - 1)
    for path, headers, body in (
        ("/v1/merchants", {}, '{"name": ' + inner + "}"),
        ("/v1/merchants", w.admin, '{"name": ' + inner + "}"),
        ("/v1/merchants", {**w.admin, "Idempotency-Key": "deep-1"}, '{"name": ' + inner + "}"),
        (f"/v1/loans/{loan['id']}/payments", w.merchant, '{"amount": "1.00", "x": ' + inner + "}"),
        ("/v1/inbound/gateways/alipay",
         {"webhook-id": "msg_deep", "webhook-timestamp": str(int(time.time())),
          "webhook-signature": signed}, notification),
    ):  # fmt: skip
        response = await client.post(
            path, content=body, headers={**headers, "content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["type"] == "too_deep"
    assert await row_counts() == before
    # At the bound the body is read, and refused for what it says.
    at_bound = '{"name": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    response = await client.post(
        "/v1/merchants", content=at_bound,
        headers={**w.admin, "content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "name"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_a_number_json_does_not_have_is_refused(
    client: httpx.AsyncClient, constant: str
) -> None:
    """Python's parser reads NaN and Infinity, which are not JSON: a signed notification
    holding one in a field the route ignores was taken (a tester's)."""
    w = await world(client)
    loan = await w.loan()
    gateway = await w.post("/v1/gateways", {"name": "alipay"}, headers=w.admin, expect=201)
    # Valid but for the gateway's own field, which the route ignores.
    notification = json.dumps({
        "type": "debit.succeeded", "timestamp": "2026-02-10T08:00:00Z",
        "data": {"loan_id": loan["id"], "amount": "1.00", "received_on": loan["disbursed_on"],
                 "external_ref": "nan-1", "gateway_fee": float(constant)},
    })  # fmt: skip
    signed = Webhook(gateway.json()["secret"]).sign("msg_nan", datetime.now(UTC), notification)
    payments = f"/v1/loans/{loan['id']}/payments"
    before = await row_counts()
    for path, headers, body in (
        ("/v1/inbound/gateways/alipay",
         {"webhook-id": "msg_nan", "webhook-timestamp": str(int(time.time())),
          "webhook-signature": signed}, notification),
        (payments, w.merchant, '{"amount": "1.00", "x": [' + constant + "]}"),
        (payments, {**w.merchant, "Idempotency-Key": "nan-1"},
         '{"amount": "1.00", "x": {"y": ' + constant + "}}"),
        ("/v1/merchants", w.admin, '{"name": ' + constant + "}"),
    ):  # fmt: skip
        response = await client.post(
            path, content=body, headers={**headers, "content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"] == [
            {"field": "body", "message": f"{constant} is not JSON", "type": "json_invalid"}
        ]
    assert await row_counts() == before
    # In a string, text like any other.
    named = await w.post("/v1/merchants", {"name": f"{constant} Appliances"}, headers=w.admin)
    assert named.status_code == 201, named.text


async def test_a_number_too_long_to_read_is_refused_by_its_field(
    client: httpx.AsyncClient,
) -> None:
    """Python reads no integer of more than 4300 digits: such a body is valid JSON, yet was
    answered as bytes that are not text."""
    w = await world(client)
    loan = await w.loan()
    before = await row_counts()
    long = "9" * 5000
    for body, field in (
        (f'{{"amount": "1.00", "external_ref": "bi", "channel": {long}}}', "channel"),
        (f'{{"amount": "1.00", "x": {{"y": [1, -{long}]}}}}', "x.y.1"),
        (long, "body"),
    ):  # fmt: skip
        for headers in (w.merchant, {**w.merchant, "Idempotency-Key": "long-1"}):
            response = await client.post(
                f"/v1/loans/{loan['id']}/payments", content=body,
                headers={**headers, "content-type": "application/json"},
            )  # fmt: skip
            assert response.status_code == 422, response.text
            assert response.json()["errors"] == [
                {"field": field, "message": "a number too long to read", "type": "number_too_long"}
            ]
    unsigned = await client.post(
        "/v1/inbound/gateways/nobody", content=f'{{"type": {long}}}',
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert unsigned.json()["errors"][0]["type"] == "number_too_long", unsigned.text
    assert await row_counts() == before
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    # As many digits as Python reads is a number like any other; in a string, text.
    for body in (f'{{"amount": "1.00", "channel": {"9" * 4300}}}',
                 f'{{"amount": "1.00", "channel": "{long}"}}'):  # fmt: skip
        response = await client.post(
            f"/v1/loans/{loan['id']}/payments", content=body,
            headers={**w.merchant, "content-type": "application/json"},
        )  # fmt: skip
        assert response.status_code == 422, response.text
        assert {e["field"] for e in response.json()["errors"]} == {"channel"}
        assert response.json()["errors"][0]["type"] != "number_too_long"
    # Bytes that are not text still say so.
    response = await client.post(
        "/v1/borrowers", content=b"\x80\x81",
        headers={**w.merchant, "content-type": "application/json"},
    )  # fmt: skip
    assert response.json()["errors"][0]["message"] == "not valid JSON (undecodable bytes)"


async def test_a_query_parameter_given_twice_is_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    got = await client.get("/v1/loans?status=active&status=delinquent", headers=w.admin)
    assert got.status_code == 422, got.text
    assert got.json()["errors"] == [
        {"field": "status", "message": "given twice", "type": "repeated"}
    ]
    before = await row_counts()
    borrower = {"external_id": "c-1", "name": "Li Wei", "phone": "+8613800138000"}
    posted = await client.post("/v1/borrowers?x=1&x=2", json=borrower, headers=w.merchant)
    assert posted.status_code == 422
    assert await row_counts() == before
    ok = await client.get("/v1/loans?status=active&limit=5", headers=w.admin)
    assert ok.status_code == 200


async def test_a_single_valued_header_given_twice_is_refused(client: httpx.AsyncClient) -> None:
    """Two Authorization headers were read as the first, two Idempotency-Keys as the last: a
    retry sending the key its client thought it sent created a second merchant (a tester's
    repro). Neither is guessed at now, and nothing is claimed or stored."""
    w = await world(client)
    admin, merchant = w.admin["Authorization"], w.merchant["Authorization"]
    two_keys = httpx.Headers([("Authorization", admin), ("Authorization", merchant)])
    got = await client.get("/v1/merchants", headers=two_keys)
    assert got.status_code == 422, got.text
    assert got.json()["errors"] == [
        {"field": "Authorization", "message": "given twice", "type": "repeated"}
    ]
    before = await row_counts()
    json_body = ("Content-Type", "application/json")
    twice = (("Idempotency-Key", ("X-A", "X-B"), [json_body]),
             ("Content-Type", ("application/json", "text/plain"), []))  # fmt: skip
    for name, values, more in twice:
        headers = httpx.Headers(
            [("Authorization", admin), *more, *((name, value) for value in values)]
        )
        posted = await client.post("/v1/merchants", content=b'{"name": "dup"}', headers=headers)
        assert posted.status_code == 422, posted.text
        assert posted.json()["errors"][0]["field"] == name
    assert await row_counts() == before
    async with session_scope() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    once = {"Authorization": admin, "Idempotency-Key": "X-A"}
    assert (await client.post("/v1/merchants", json={"name": "one"}, headers=once)).is_success
