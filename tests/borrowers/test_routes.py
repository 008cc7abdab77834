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
    for query in ("limit=0", "limit=201", "limit=x", "cursor=%%%"):
        response = await client.get(f"/v1/borrowers?{query}", headers=w.merchant)
        assert response.status_code == 422, query
        assert response.headers["content-type"].startswith("application/problem+json")
