"""A 201 names the object it created in ``Location`` (RFC 9110 §15.3.2), a path a GET answers
with that object; an idempotent replay names it again."""

import httpx

from tests.factories import world


async def created_at(client: httpx.AsyncClient, response: httpx.Response,
                     headers: dict[str, str]) -> dict[str, object]:  # fmt: skip
    """The object at the response's Location, which must be the object the response shows."""
    assert response.status_code in (201, 202), response.text
    location = response.headers["location"]
    assert location.startswith("/v1/")
    fetched = await client.get(location, headers=headers)
    assert fetched.status_code == 200, (location, fetched.text)
    body = fetched.json()
    assert body["id"] == response.json()["id"]
    return dict(body)


async def test_each_created_object_is_where_location_says(client: httpx.AsyncClient) -> None:
    w = await world(client)
    product = await client.post("/v1/products", headers=w.admin, json={
        "code": "TV-12.A", "name": "TV", "annual_interest_rate": "0.12",
        "amortization": "equal_installment", "term_options": [12]})  # fmt: skip
    assert product.headers["location"] == "/v1/products/TV-12.A"
    assert (await client.get(product.headers["location"], headers=w.admin)).json()["code"] == (
        "TV-12.A"
    )

    borrower = await w.post("/v1/borrowers", {"external_id": "c-1", "name": "Li Wei",
                                              "phone": "+8613800138000"})  # fmt: skip
    await created_at(client, borrower, w.merchant)
    loan = await w.post("/v1/loans", {"borrower_id": borrower.json()["id"],
                                      "product_code": w.product_code, "principal": "1200.00",
                                      "term": 12, "merchant_order_ref": "o-1",
                                      "disbursed_on": "2026-01-10"})  # fmt: skip
    assert (await created_at(client, loan, w.merchant))["principal"] == "1200.00"
    loan_id = loan.json()["id"]
    payment = await w.post(f"/v1/loans/{loan_id}/payments", {"amount": "50.00"})
    assert (await created_at(client, payment, w.merchant))["amount"] == "50.00"
    extension = {"kind": "term_extension", "reason": "job loss", "months": 2}
    restructure = await w.post(f"/v1/loans/{loan_id}/restructures", extension)
    await created_at(client, restructure, w.merchant)
    endpoint = await client.post("/v1/webhook-endpoints", headers=w.admin,
                                 json={"url": "https://hooks.example.com/loanwatch"})  # fmt: skip
    await created_at(client, endpoint, w.admin)

    close = await client.post("/v1/close-runs", headers=w.admin, json={"as_of": "2026-01-12"})
    assert close.headers["location"] == "/v1/close-runs/2026-01-12"
    run = await client.get(close.headers["location"], headers=w.admin)
    assert run.json()["as_of"] == "2026-01-12"
    risk_run = await client.post("/v1/risk/runs", headers=w.admin, json={"as_of": "2026-01-12"})
    await created_at(client, risk_run, w.admin)


async def test_a_replayed_201_names_the_same_object(client: httpx.AsyncClient) -> None:
    w = await world(client)
    borrower = await w.borrower()
    body = {"borrower_id": borrower["id"], "product_code": w.product_code,
            "principal": "600.00", "term": 6, "merchant_order_ref": "o-9"}  # fmt: skip
    headers = {**w.merchant, "Idempotency-Key": "checkout-9"}
    first = await client.post("/v1/loans", json=body, headers=headers)
    replay = await client.post("/v1/loans", json=body, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert (
        replay.headers["location"]
        == first.headers["location"]
        == (f"/v1/loans/{first.json()['id']}")
    )


async def test_a_refusal_names_no_location(client: httpx.AsyncClient) -> None:
    w = await world(client)
    refused = await w.post("/v1/borrowers", {"external_id": "c-1"})
    assert refused.status_code == 422
    assert "location" not in refused.headers


async def test_the_document_shows_location_on_created_objects(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "Location" in paths["/v1/loans"]["post"]["responses"]["201"]["headers"]
    assert "Location" in paths["/v1/close-runs"]["post"]["responses"]["202"]["headers"]
