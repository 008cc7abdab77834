"""If-Match on the writes that change an object a client reads with an ETag (RFC 9110,
section 13.1.1): the change is made only while the object is as the client read it."""

import httpx

from tests.factories import world


async def test_a_limit_is_set_only_as_read(client: httpx.AsyncClient) -> None:
    """Two admins set a limit at once, each from the tag it read: the second is told, not
    silently overwritten (If-Match was ignored: a tester's)."""
    w = await world(client)
    borrower = await w.borrower(monthly_income="10000.00")
    path = f"/v1/borrowers/{borrower['id']}"
    read = await client.get(path, headers=w.admin)
    tag = read.headers["etag"]
    first = await client.patch(path, json={"credit_limit": "20000.00"},
                               headers={**w.admin, "If-Match": tag})  # fmt: skip
    assert first.status_code == 200, first.text
    second = await client.patch(path, json={"credit_limit": "5000.00"},
                                headers={**w.admin, "If-Match": tag})  # fmt: skip
    assert second.status_code == 412, second.text
    assert second.headers["content-type"] == "application/problem+json"
    assert second.json()["code"] == "precondition_failed"
    assert (await w.get(path))["credit_limit"] == "20000.00"
    # The tag of the answer is the tag to send next; a weak one never matches, nor an empty
    # field (an unset variable's: it let the write through); "*" any.
    now = (await client.get(path, headers=w.admin)).headers["etag"]
    assert first.headers["etag"] == now
    for if_match, status in ((f"W/{now}", 412), ("", 412), (f'"stale", {now}', 200), ("*", 200)):
        answer = await client.patch(path, json={"credit_limit": "21000.00"},
                                    headers={**w.admin, "If-Match": if_match})  # fmt: skip
        assert answer.status_code == status, (if_match, answer.text)
    limits = await w.get("/v1/events?type=borrower.credit_limit_changed", headers=w.admin)
    assert [e["data"]["credit_limit"] for e in limits["items"]] == ["20000.00", "21000.00"]


async def test_a_webhook_endpoint_is_changed_only_as_read(client: httpx.AsyncClient) -> None:
    w = await world(client)
    body = {"url": "https://hooks.example.com/loanwatch"}
    made = (await w.post("/v1/webhook-endpoints", body, headers=w.admin, expect=201)).json()
    path = f"/v1/webhook-endpoints/{made['id']}"
    tag = (await client.get(path, headers=w.admin)).headers["etag"]
    changed = await client.patch(path, json={"description": "collections"},
                                 headers={**w.admin, "If-Match": tag})  # fmt: skip
    assert changed.status_code == 200, changed.text
    stale = await client.patch(path, json={"enabled": False},
                               headers={**w.admin, "If-Match": tag})  # fmt: skip
    assert stale.status_code == 412, stale.text
    assert (await w.get(path, headers=w.admin))["enabled"] is True


async def test_the_document_offers_if_match_where_it_is_honoured(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/v1/borrowers/{borrower_id}", "/v1/webhook-endpoints/{endpoint_id}"):
        patch = paths[path]["patch"]
        assert "If-Match" in {p["name"] for p in patch["parameters"]}, path
        assert "412" in patch["responses"], path
        assert "ETag" in patch["responses"]["200"]["headers"], path
