"""401 / 403 / 404-for-another-merchant, per SPEC's role matrix."""

import re

import httpx
import pytest
from fastapi.routing import APIRoute

from app import clock
from app.api.auth import Principal, PrincipalCache, hash_key, principals
from app.api.deps import authenticate
from app.api_keys import service as api_keys_service
from app.api_keys.models import Role
from app.db import session_scope
from app.errors import Unauthorized
from app.main import app
from tests.factories import api_key, auth, world


async def test_missing_or_invalid_key_is_401(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = await client.get("/v1/loans", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == 'Bearer realm="loanwatch"'


async def test_revoked_key_is_401(client: httpx.AsyncClient) -> None:
    w = await world(client)
    created = await client.post("/v1/api-keys", json={"role": "dashboard"}, headers=w.admin)
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith("lw_")
    assert (await client.get("/v1/loans", headers=auth(key["key"]))).status_code == 200
    deleted = await client.delete(f"/v1/api-keys/{key['id']}", headers=w.admin)
    assert deleted.status_code == 204
    assert (await client.get("/v1/loans", headers=auth(key["key"]))).status_code == 401
    again = await client.delete(f"/v1/api-keys/{key['id']}", headers=w.admin)
    assert again.status_code == 404
    detail = again.json()["detail"]
    assert detail.startswith(f"API key {key['id']} was revoked at 20")
    assert detail.endswith("Z")


async def test_an_admin_lists_the_keys_to_find_one_to_revoke(client: httpx.AsyncClient) -> None:
    """Without a list, a key whose id was never shown (the CLI's, the first start's) could not
    be revoked (a tester's). No secret is listed: only its hash is stored."""
    w = await world(client)
    made = (await client.post("/v1/api-keys", json={"role": "dashboard", "description": "wall"},
                              headers=w.admin)).json()  # fmt: skip
    await client.delete(f"/v1/api-keys/{made['id']}", headers=w.admin)
    listed = await w.get("/v1/api-keys?limit=100", headers=w.admin)
    by_id = {k["id"]: k for k in listed["items"]}
    assert set(by_id[made["id"]]) == {
        "id", "role", "merchant_id", "description", "created_at", "revoked_at",
    }  # fmt: skip
    assert (by_id[made["id"]]["description"], by_id[made["id"]]["revoked_at"] is None) == (
        "wall", False,
    )  # fmt: skip
    merchant_keys = [k for k in listed["items"] if k["role"] == "merchant"]
    assert [k["merchant_id"] for k in merchant_keys] == [w.merchant_id]
    assert "lw_" not in str(listed)
    assert (await client.get("/v1/api-keys", headers=w.merchant)).status_code == 403
    dashboard = auth(await api_key(Role.DASHBOARD))
    assert (await client.get("/v1/api-keys", headers=dashboard)).status_code == 200


async def test_a_look_up_racing_the_revocation_does_not_keep_the_key(
    client: httpx.AsyncClient,
) -> None:
    """A request authenticated while the revocation was not yet committed read the key as
    valid; it put it back in the cache, which then accepted it for 5 s after the 204,
    writes included (a tester's, on PostgreSQL)."""
    w = await world(client)
    key = (await client.post("/v1/api-keys", json={"role": "merchant",
                                                   "merchant_id": w.merchant_id},
                             headers=w.admin)).json()  # fmt: skip
    async with session_scope() as session:
        admin = await authenticate(w.admin["Authorization"])
        await api_keys_service.revoke_api_key(session, admin, key_id=key["id"])
        with pytest.raises(Unauthorized):  # its own session still reads the key as valid
            await authenticate(f"Bearer {key['key']}")
    assert principals.get(hash_key(key["key"])) is None
    refused = await client.post(
        "/v1/borrowers",
        json={"external_id": "late", "name": "n", "phone": "+8613800138000"},
        headers=auth(key["key"]),
    )
    assert refused.status_code == 401


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "expected"),
    [
        ("merchant", "POST", "/v1/merchants", {"name": "x"}, 403),
        ("merchant", "POST", "/v1/api-keys", {"role": "admin"}, 403),
        ("merchant", "POST", "/v1/products", {}, 403),
        ("dashboard", "POST", "/v1/borrowers", {}, 403),
        ("dashboard", "POST", "/v1/merchants", {"name": "x"}, 403),
        ("gateway", "GET", "/v1/loans", None, 403),
        ("gateway", "GET", "/v1/products", None, 403),
        ("dashboard", "GET", "/v1/loans", None, 200),
        ("dashboard", "GET", "/v1/events", None, 200),
        ("merchant", "GET", "/v1/events", None, 403),
        ("merchant", "GET", "/v1/products", None, 200),
        ("dashboard", "GET", "/v1/merchants", None, 200),
    ],
)
async def test_role_matrix(
    client: httpx.AsyncClient, role: str, method: str, path: str, body: object, expected: int
) -> None:
    w = await world(client)
    key = await api_key(Role(role), w.merchant_id if role == "merchant" else None)
    response = await client.request(method, path, json=body, headers=auth(key))
    assert response.status_code == expected, response.text
    if expected == 403:
        assert response.json()["code"] == "forbidden"


async def test_the_dashboard_reads_everything(client: httpx.AsyncClient) -> None:
    """SPEC: dashboard is "read-only, everything": every GET of the API, lists and one
    webhook endpoint with its deliveries alike."""
    w = await world(client)
    await w.loan()
    hook = await w.post("/v1/webhook-endpoints", {"url": "https://hooks.example.com/h"},
                        headers=w.admin, expect=201)  # fmt: skip
    key = auth(await api_key(Role.DASHBOARD))
    lists = [
        route.path
        for route in app.routes
        if isinstance(route, APIRoute) and "GET" in route.methods
        and route.path.startswith("/v1/") and "{" not in route.path
    ]  # fmt: skip
    endpoint = f"/v1/webhook-endpoints/{hook.json()['id']}"
    assert {"/v1/gateways", "/v1/webhook-endpoints"} <= set(lists)
    for path in [*lists, endpoint, f"{endpoint}/deliveries"]:
        response = await client.get(path, headers=key)
        assert response.status_code == 200, (path, response.text)


async def test_merchant_keys_cannot_see_other_merchants(client: httpx.AsyncClient) -> None:
    ours = await world(client)
    theirs = await world(client)
    loan = await theirs.loan(principal="100.00", disbursed_on="2026-01-10")
    payment = await theirs.pay(loan["id"], "10.00", "2026-01-20")
    paths = [
        f"/v1/loans/{loan['id']}",
        f"/v1/loans/{loan['id']}/schedule",
        f"/v1/loans/{loan['id']}/transactions",
        f"/v1/borrowers/{loan['borrower_id']}",
        f"/v1/borrowers/{loan['borrower_id']}/loans",
        f"/v1/payments/{payment['id']}",
    ]
    for path in paths:
        response = await client.get(path, headers=ours.merchant)
        assert response.status_code == 404, path
    writes = [
        (f"/v1/loans/{loan['id']}/payments", {"amount": "1.00"}),
        (f"/v1/loans/{loan['id']}/cancel", {}),
        (f"/v1/payments/{payment['id']}/reverse", {"reason": "nsf"}),
        ("/v1/loans", {"borrower_id": loan["borrower_id"], "product_code": ours.product_code,
                       "principal": "10.00", "term": 12, "merchant_order_ref": "steal"}),
    ]  # fmt: skip
    for path, body in writes:
        response = await client.post(path, json=body, headers=ours.merchant)
        assert response.status_code == 404, (path, response.text)
    listed = await client.get("/v1/loans", headers=ours.merchant)
    assert listed.json()["items"] == []
    # The owner and the dashboard do see it.
    assert (await client.get(f"/v1/loans/{loan['id']}", headers=theirs.merchant)).status_code == 200
    dash = auth(await api_key(Role.DASHBOARD))
    assert (await client.get(f"/v1/loans/{loan['id']}", headers=dash)).status_code == 200


async def test_merchant_registers_borrowers_for_itself_only(client: httpx.AsyncClient) -> None:
    ours = await world(client)
    theirs = await world(client)
    body = {"external_id": "c1", "name": "A", "phone": "+8613800138000"}
    response = await client.post(
        "/v1/borrowers", json={**body, "merchant_id": theirs.merchant_id}, headers=ours.merchant
    )
    assert response.status_code == 403
    response = await client.post("/v1/borrowers", json=body, headers=ours.merchant)
    assert response.status_code == 201
    assert response.json()["merchant_id"] == ours.merchant_id
    # An admin must name the merchant.
    response = await client.post("/v1/borrowers", json=body, headers=ours.admin)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "merchant_id"
    response = await client.post(
        "/v1/borrowers", json={**body, "merchant_id": theirs.merchant_id}, headers=ours.admin
    )
    assert response.status_code == 201
    duplicate = await client.post("/v1/borrowers", json=body, headers=ours.merchant)
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "borrower_exists"


async def test_admin_overrides_the_credit_limit(client: httpx.AsyncClient) -> None:
    w = await world(client)
    borrower = await w.borrower(monthly_income="1000.00")
    assert borrower["credit_limit"] == "3000.00"
    response = await client.patch(f"/v1/borrowers/{borrower['id']}",
                                  json={"credit_limit": "500.00"}, headers=w.merchant)  # fmt: skip
    assert response.status_code == 403
    response = await client.patch(f"/v1/borrowers/{borrower['id']}",
                                  json={"credit_limit": "500.00"}, headers=w.admin)  # fmt: skip
    assert response.status_code == 200
    assert response.json()["credit_limit"] == "500.00"
    refused = await w.post("/v1/loans", {
        "borrower_id": borrower["id"], "product_code": w.product_code, "principal": "500.01",
        "term": 12, "merchant_order_ref": "o",
    })  # fmt: skip
    assert refused.json()["code"] == "credit_limit_exceeded"
    events = (await client.get("/v1/events?type=borrower.credit_limit_changed",
                               headers=w.admin)).json()["items"]  # fmt: skip
    assert [e["data"]["credit_limit"] for e in events] == ["500.00"]
    # Dated and graded as the grading's changes are (both were missing: a tester's).
    business = (await w.get("/v1/business-date", headers=w.admin))["business_date"]
    assert (events[0]["data"]["grade"], events[0]["data"]["as_of"]) == (
        "A", business or str(clock.today()),
    )  # fmt: skip


async def test_the_caller_is_checked_before_the_body(client: httpx.AsyncClient) -> None:
    """SPEC: a missing or invalid key is 401, a wrong role 403. FastAPI reads a JSON body
    before any dependency runs, so a body that is not JSON was a 422 to anyone."""
    w = await world(client)
    dashboard = auth(await api_key(Role.DASHBOARD))
    bogus = {"Authorization": "Bearer bogus"}
    cases = [
        ({}, 401, "unauthorized"),
        (bogus, 401, "unauthorized"),
        ({**bogus, "Idempotency-Key": "bogus"}, 401, "unauthorized"),
        (dashboard, 403, "forbidden"),
        ({**dashboard, "Idempotency-Key": "dashboard"}, 403, "forbidden"),
        (w.merchant, 422, "validation_error"),
    ]
    for content in (b"{not json", b"\x80\x81"):
        for headers, status, code in cases:
            if "Idempotency-Key" in headers:  # one key per body
                headers = {
                    **headers,
                    "Idempotency-Key": f"{headers['Idempotency-Key']}-{content!r}",
                }
            response = await client.post(
                "/v1/loans", content=content,
                headers={**headers, "content-type": "application/json"},
            )  # fmt: skip
            assert response.status_code == status, (content, headers, response.text)
            assert response.json()["code"] == code
    # Every route that reads a body, whatever role it asks for (none takes a gateway key).
    gateway = auth(await api_key(Role.GATEWAY))
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.body_field is None:
            continue
        path = re.sub(r"\{[^}]+\}", "x1", route.path)
        for method in route.methods:
            for headers, status in (({}, 401), (gateway, 403)):
                response = await client.request(
                    method, path, content=b"{not json",
                    headers={**headers, "content-type": "application/json"},
                )  # fmt: skip
                assert response.status_code == status, (method, route.path, response.text)


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nowhere")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_cached_principal_expires_and_is_forgotten() -> None:
    now = [1000.0]
    cache = PrincipalCache(ttl_seconds=5.0, clock=lambda: now[0])
    principal = Principal(api_key_id="key_1", role=Role.DASHBOARD)
    cache.put("hash", principal)
    now[0] += 4.9
    assert cache.get("hash") == principal
    now[0] += 0.1
    assert cache.get("hash") is None
    cache.revoke("hash")
    assert cache.get("hash") is None
    cache.put("hash", principal)  # by a look-up that read the key before its revocation
    assert cache.get("hash") is None
