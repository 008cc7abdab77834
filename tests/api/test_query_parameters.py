"""A query parameter a route does not take is refused on every route, not ignored: a filter
that does not exist answered unfiltered data as if it had been applied (app/api/routing.py)."""

import re

import httpx
from fastapi.routing import APIRoute

from app.api.routing import StrictRoute, query_parameters
from app.api_keys.models import Role
from app.main import app
from tests.api.test_validation import row_counts
from tests.factories import api_key, auth, world

PROBLEM = "application/problem+json"


async def test_a_filter_that_does_not_exist_is_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    other = await client.post("/v1/merchants", json={"name": "Other"}, headers=w.admin)
    assert other.status_code == 201, other.text
    await w.borrower()
    for path, name in ((f"/v1/borrowers?merchant_id={other.json()['id']}", "merchant_id"),
                       ("/v1/risk/flags?acknowledged=true", "acknowledged"),
                       ("/v1/loans?foo=bar", "foo")):  # fmt: skip
        response = await client.get(path, headers=w.admin)
        assert response.status_code == 422, path
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "validation_error"
        assert [(e["field"], e["type"]) for e in response.json()["errors"]] == [
            (name, "extra_forbidden")
        ], path

    # Each unknown one is named, with what the route takes; the known ones pass.
    response = await client.get("/v1/loans?status=active&foo=1&bar=&limit=5", headers=w.admin)
    assert response.status_code == 422
    takes = (
        "borrower_id, bucket, currency, cursor, flag, limit, merchant_id, merchant_order_ref, "
        "product_code, status"
    )
    assert response.json()["errors"] == [
        {"field": name, "message": f"not a query parameter of this operation (it takes {takes})",
         "type": "extra_forbidden"}
        for name in ("foo", "bar")
    ]  # fmt: skip
    assert response.json()["detail"] == (
        f"the query names parameters this operation does not take: 'foo', 'bar'; it takes {takes}"
    )
    for path in ("/v1/loans?status=active&bucket=current&limit=5", "/v1/borrowers?limit=1",
                 "/v1/portfolio/summary?currency=CNY&merchant_id=m",
                 "/v1/portfolio/alerts?since=2026-01-01&limit=5"):  # fmt: skip
        assert (await client.get(path, headers=w.admin)).status_code == 200, path
    head = await client.head("/v1/loans?foo=bar", headers=w.admin)
    assert head.status_code == 422

    # Thousands are answered with the first few, not a megabyte.
    response = await client.get(
        "/v1/loans?" + "&".join(f"p{n}=1" for n in range(5000)), headers=w.admin
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [f"p{n}" for n in range(20)]
    assert "'p19' and 4980 more; it takes" in response.json()["detail"]
    assert len(response.content) < 10_000

    # A write refused for its query has written nothing.
    before = await row_counts()
    borrower = {"external_id": "c-1", "name": "Li Wei", "phone": "+8613800138000"}
    for headers in (w.merchant, {**w.merchant, "Idempotency-Key": "query-1"}):
        posted = await client.post("/v1/borrowers?dry_run=true", json=borrower, headers=headers)
        assert posted.status_code == 422, posted.text
        assert posted.json()["errors"][0]["field"] == "dry_run"
    assert await row_counts() == before


async def test_an_empty_filter_is_refused(client: httpx.AsyncClient) -> None:
    """``?type=`` listed every event and ``?merchant_id=`` on the portfolio no segments: an
    empty value is a mistake in the caller's query, not a filter to apply literally."""
    w = await world(client)
    segments = "/v1/portfolio/segments?by=product&product_code="
    for path, name in (("/v1/events?type=", "type"), ("/v1/events?after=", "after"),
                       ("/v1/loans?merchant_id=", "merchant_id"),
                       ("/v1/loans?borrower_id=", "borrower_id"),
                       ("/v1/loans?merchant_order_ref=", "merchant_order_ref"),
                       ("/v1/borrowers?external_id=", "external_id"),
                       ("/v1/risk/flags?loan_id=", "loan_id"),
                       ("/v1/risk/flags?borrower_id=", "borrower_id"),
                       ("/v1/portfolio/summary?merchant_id=", "merchant_id"),
                       (segments, "product_code")):  # fmt: skip
        response = await client.get(path, headers=w.admin)
        assert response.status_code == 422, path
        assert response.headers["content-type"] == PROBLEM
        assert [(e["field"], e["type"]) for e in response.json()["errors"]] == [
            (name, "string_too_short")
        ], path
    # A cursor left empty is the first page, as clients that always send one expect.
    assert (await client.get("/v1/loans?cursor=", headers=w.admin)).status_code == 200


def api_routes() -> list[APIRoute]:
    """Every route but the documentation pages (fastapi-offline's, not ours: Swagger UI's
    links may carry parameters of their own)."""
    return [
        route for route in app.routes
        if isinstance(route, APIRoute) and not route.path.startswith(("/docs", "/redoc"))
    ]  # fmt: skip


async def test_every_route_refuses_a_parameter_it_does_not_take(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    before = await row_counts()
    for route in api_routes():
        path = re.sub(r"\{[^}]+\}", "x1", route.path) + "?not_a_parameter=1"
        for method in sorted(route.methods):
            response = await client.request(method, path, headers=w.admin)
            assert response.status_code == 422, (method, route.path, response.text)
            fields = [e["field"] for e in response.json()["errors"]]
            assert fields == ["not_a_parameter"], (method, route.path)
    assert await row_counts() == before


def test_every_route_takes_exactly_the_query_parameters_it_documents() -> None:
    """What the check lets through is what /openapi.json lists, dependencies' parameters
    (``limit``, ``cursor``, the portfolio's scope) and aliases (``from``) included, so no
    documented parameter is refused (tests/test_embedded.py fuzzes them)."""
    document = app.openapi()
    checked = 0
    for route in api_routes():
        assert isinstance(route, StrictRoute), route.path
        for method in route.methods:
            operation = document["paths"].get(route.path, {}).get(method.lower())
            if operation is None:
                assert not route.include_in_schema, (method, route.path)
                continue
            documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            assert query_parameters(route) == documented, (method, route.path)
            checked += 1
    assert checked == sum(len(methods) for methods in document["paths"].values())


def test_every_free_text_filter_refuses_an_empty_value() -> None:
    """A string filter without an enum, format or pattern (which refuse "" already) declares
    ``minLength`` 1, so a filter added later cannot take an empty value literally again; only
    ``cursor`` may be empty (the first page)."""
    free_text = []
    for path, operations in app.openapi()["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schemas = parameter["schema"].get("anyOf", [parameter["schema"]])
                strings = [s for s in schemas if s.get("type") == "string"]
                if parameter["in"] != "query" or parameter["name"] == "cursor" or not strings:
                    continue
                if any({"enum", "format", "pattern"} & set(s) for s in strings):
                    continue
                free_text.append((path, parameter["name"]))
                assert all(s.get("minLength", 0) >= 1 for s in strings), (path, parameter)
    assert ("/v1/events", "type") in free_text  # the check sees the filters it guards


async def test_the_caller_is_checked_before_the_query(client: httpx.AsyncClient) -> None:
    """SPEC: a missing or invalid key is 401, a wrong role 403, whatever the request."""
    w = await world(client)
    gateway = auth(await api_key(Role.GATEWAY))
    dashboard = auth(await api_key(Role.DASHBOARD))
    cases = [
        ("GET", "/v1/loans?foo=bar", {}, 401),
        ("GET", "/v1/loans?foo=bar", {"Authorization": "Bearer bogus"}, 401),
        ("GET", "/v1/loans?foo=bar", gateway, 403),
        ("GET", "/v1/loans?foo=bar", dashboard, 422),
        # The principal inside the portfolio's scope dependency.
        ("GET", "/v1/portfolio/summary?foo=bar", {}, 401),
        ("GET", "/v1/portfolio/summary?foo=bar", gateway, 403),
        ("POST", "/v1/merchants?foo=bar", dashboard, 403),
        ("POST", "/v1/merchants?foo=bar", w.admin, 422),
    ]
    for method, path, headers, status in cases:
        response = await client.request(method, path, json={"name": "x"}, headers=headers)
        assert response.status_code == status, (method, path, headers, response.text)
