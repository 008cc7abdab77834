"""Listing borrowers through the API: pages, the external_id look-up, each merchant's own, and
the exposure of each borrower's open loans."""

import httpx

from app.api_keys.models import Role
from tests.factories import api_key, auth, world


async def test_pages_of_borrowers_with_their_exposure(client: httpx.AsyncClient) -> None:
    w = await world(client)
    made = [await w.borrower() for _ in range(5)]
    await w.loan(made[0]["id"], principal="1200.00")
    await w.loan(made[0]["id"], principal="300.00")
    await w.loan(made[2]["id"], principal="500.00")

    seen: list[dict[str, object]] = []
    path = "/v1/borrowers?limit=2"
    while True:
        page = await w.get(path)
        assert len(page["items"]) <= 2
        seen.extend(page["items"])
        if page["next_cursor"] is None:
            break
        path = f"/v1/borrowers?limit=2&cursor={page['next_cursor']}"
    assert [b["id"] for b in seen] == [b["id"] for b in made]
    exposure = {b["id"]: b["exposure"] for b in seen}
    assert exposure[made[0]["id"]] == "1500.00"
    assert exposure[made[2]["id"]] == "500.00"
    assert exposure[made[1]["id"]] == "0.00"
    # The list shows what the borrower resource shows.
    one = await w.get(f"/v1/borrowers/{made[0]['id']}")
    assert {k: v for k, v in one.items() if k != "open_flags"} == {
        k: v for k, v in seen[0].items() if k != "open_flags"
    }


async def test_external_id_and_merchants(client: httpx.AsyncClient) -> None:
    w = await world(client)
    mine = await w.borrower()
    other = await world(client)
    theirs = await other.borrower()

    found = await w.get(f"/v1/borrowers?external_id={mine['external_id']}")
    assert [b["id"] for b in found["items"]] == [mine["id"]]
    assert (await w.get("/v1/borrowers?external_id=nobody"))["items"] == []
    # A merchant sees its own borrowers only; a dashboard sees every merchant's.
    assert [b["id"] for b in (await w.get("/v1/borrowers"))["items"]] == [mine["id"]]
    dashboard = auth(await api_key(Role.DASHBOARD))
    everyone = await w.get("/v1/borrowers", headers=dashboard)
    assert {b["id"] for b in everyone["items"]} == {mine["id"], theirs["id"]}
    gateway = auth(await api_key(Role.GATEWAY))
    assert (await client.get("/v1/borrowers", headers=gateway)).status_code == 403


async def test_bad_list_parameters_are_refused(client: httpx.AsyncClient) -> None:
    w = await world(client)
    # A count in digits alone: the parser read "5_0" as 50 and a space or sign before it.
    loose = ("limit=5_0", "limit=5.0", "limit=%2B5", "limit=%205", "limit=%E2%80%895")
    for query in ("limit=0", "limit=201", "limit=x", "cursor=%%%", *loose):
        response = await client.get(f"/v1/borrowers?{query}", headers=w.merchant)
        assert response.status_code == 422, query
        assert response.headers["content-type"].startswith("application/problem+json")
        if query in loose:
            assert response.json()["errors"][0]["field"] == "limit", query
    assert (await client.get("/v1/borrowers?limit=007", headers=w.merchant)).status_code == 200


async def test_a_borrower_borrows_in_their_own_currency(client: httpx.AsyncClient) -> None:
    w = await world(client, currency="JPY", late_fee={"kind": "fixed", "amount": "500"})
    yen = await w.borrower(currency="JPY", monthly_income="300000")
    assert (yen["currency"], yen["credit_limit"]) == ("JPY", "50000")
    loan = await w.loan(yen["id"], principal="12000")
    assert (loan["currency"], loan["principal"]) == ("JPY", "12000")
    assert (await w.get(f"/v1/borrowers/{yen['id']}"))["exposure"] == "12000"
    # A borrower in the service's currency cannot take a loan in another.
    yuan = await w.borrower()
    mismatch = await w.post("/v1/loans", {"borrower_id": yuan["id"], "product_code": w.product_code,
                                          "principal": "12000", "term": 12,
                                          "merchant_order_ref": "jpy-1"})  # fmt: skip
    assert (mismatch.status_code, mismatch.json()["code"]) == (422, "currency_mismatch")
    for currency in ("XXX", "jpy"):
        body = {"external_id": "c-x", "name": "Sato", "phone": "+819012345678",
                "currency": currency}  # fmt: skip
        bad = await w.post("/v1/borrowers", body)
        assert bad.status_code == 422, currency
        assert bad.json()["errors"][0]["field"] == "currency"
