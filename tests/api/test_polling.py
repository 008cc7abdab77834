"""The reads collections and reconcilers poll carry an ETag and answer 304 while nothing
changed (SPEC.md, Polling)."""

import httpx

from tests.factories import World, product, world


async def assert_polled(client: httpx.AsyncClient, w: World, path: str) -> str:
    first = await client.get(path, headers=w.merchant)
    assert first.status_code == 200, (path, first.text)
    etag = first.headers["etag"]
    again = await client.get(path, headers={**w.merchant, "If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b""), path
    return etag


async def test_a_loans_ledger_payments_relief_and_promises_are_polled(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3)  # fmt: skip
    await w.post("/v1/close-runs", {"as_of": "2026-01-10"}, headers=w.admin, expect=201)
    loan = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    await w.post("/v1/close-runs", {"as_of": "2026-02-15"}, headers=w.admin, expect=201)
    paid = await w.pay(loan["id"], "100.00", "2026-02-15")
    await w.post(f"/v1/loans/{loan['id']}/promises", {"amount": "312.00", "due_on": "2026-02-20"},
                 expect=201)  # fmt: skip
    relief = (await w.post(f"/v1/loans/{loan['id']}/restructures",
                           {"kind": "term_extension", "months": 2, "reason": "income shock"},
                           expect=201)).json()  # fmt: skip
    of_loan = f"/v1/loans/{loan['id']}"
    paths = [f"{of_loan}/transactions", f"/v1/payments/{paid['id']}",
             f"{of_loan}/restructures", f"{of_loan}/promises",
             f"{of_loan}/restructures/{relief['id']}",
             f"/v1/restructures/{relief['id']}"]  # fmt: skip
    before = {path: await assert_polled(client, w, path) for path in paths}
    # A reversal moves the ledger, the payment and the promise it had counted toward: their
    # tags change; the pending relief's stay.
    await w.post(f"/v1/payments/{paid['id']}/reverse", {"reason": "nsf"}, expect=200)
    after = {path: await assert_polled(client, w, path) for path in paths}
    assert [path for path in paths if after[path] != before[path]] == [
        paths[0], paths[1], paths[3],
    ]  # fmt: skip
    # Approved, the relief's own tag changes.
    await w.post(f"/v1/restructures/{relief['id']}/approve", {}, headers=w.admin, expect=200)
    assert await assert_polled(client, w, paths[5]) != after[paths[5]]


async def test_a_borrowers_loans_and_a_risk_run_are_polled(client: httpx.AsyncClient) -> None:
    """As ``/v1/loans?borrower_id=`` and a close run are (an auditor found them without)."""
    w = await world(client)
    loan = await w.loan()
    of_borrower = f"/v1/borrowers/{loan['borrower_id']}/loans"
    before = await assert_polled(client, w, of_borrower)
    await w.pay(loan["id"], "10.00")
    assert await assert_polled(client, w, of_borrower) != before
    await w.post("/v1/close-runs", {"as_of": loan["disbursed_on"]}, headers=w.admin, expect=201)
    run = await w.post("/v1/risk/runs", {"as_of": loan["disbursed_on"]}, headers=w.admin,
                       expect=201)  # fmt: skip
    path = f"/v1/risk/runs/{run.json()['id']}"
    first = await client.get(path, headers=w.admin)
    again = await client.get(path, headers={**w.admin, "If-None-Match": first.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")


async def test_if_none_match_on_several_lines_and_a_vary_on_the_key(
    client: httpx.AsyncClient,
) -> None:
    """Several If-None-Match lines are one list (RFC 9110); the body depends on the key, so
    a cache must key its copy by it."""
    w = await world(client)
    loan = await w.loan()
    path = f"/v1/loans/{loan['id']}"
    first = await client.get(path, headers=w.merchant)
    assert first.headers["vary"] == "Authorization"
    lines = [("If-None-Match", '"stale"'), ("If-None-Match", first.headers["etag"])]
    again = await client.get(path, headers=[*w.merchant.items(), *lines])
    assert (again.status_code, again.headers["vary"]) == (304, "Authorization")


async def test_if_none_match_star_stands_alone(client: httpx.AsyncClient) -> None:
    """``*`` matches any current body only as the whole field (RFC 9110, section 13.1.2):
    ``W/*`` is no entity tag, and was taken as ``*``."""
    w = await world(client)
    path = f"/v1/loans/{(await w.loan())['id']}"
    answers = {}
    for value in ("*", " * ", "W/*", '"stale", W/*'):
        response = await client.get(path, headers={**w.merchant, "If-None-Match": value})
        answers[value] = response.status_code
    assert answers == {"*": 304, " * ": 304, "W/*": 200, '"stale", W/*': 200}


async def test_the_configuration_reads_carry_an_etag_too(client: httpx.AsyncClient) -> None:
    """Products, merchants, gateways, webhook endpoints and the risk rules: a POS system
    caching the product list revalidates it like any other read (they had no ETag)."""
    w = await world(client)
    await w.post("/v1/gateways", {"name": "alipay"}, headers=w.admin, expect=201)
    hook = await w.post("/v1/webhook-endpoints", {"url": "https://hooks.test/h"},
                        headers=w.admin, expect=201)  # fmt: skip
    paths = ["/v1/products", f"/v1/products/{w.product_code}", "/v1/merchants", "/v1/gateways",
             "/v1/webhook-endpoints", f"/v1/webhook-endpoints/{hook.json()['id']}",
             "/v1/risk/rules"]  # fmt: skip
    admin = World(client, w.admin, w.merchant_id, w.admin, w.product_code)
    before = {path: await assert_polled(client, admin, path) for path in paths}
    # A change to each moves its tag, and only its own.
    await product(client, w.admin)
    await w.post("/v1/merchants", {"name": "Other Appliances"}, headers=w.admin, expect=201)
    await w.post("/v1/gateways", {"name": "wechat"}, headers=w.admin, expect=201)
    await client.patch(f"/v1/webhook-endpoints/{hook.json()['id']}",
                       json={"description": "the ledger's"}, headers=w.admin)  # fmt: skip
    after = {path: await assert_polled(client, admin, path) for path in paths}
    assert [path for path in paths if after[path] != before[path]] == [
        paths[0], paths[2], paths[3], paths[4], paths[5],
    ]  # fmt: skip
    # A merchant key reads the products, with its own tag check.
    await assert_polled(client, w, "/v1/products")
