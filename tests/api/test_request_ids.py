"""Every answer names its request (X-Request-ID, a client's plain id kept) and says `nosniff`,
whichever layer gave it: the loan read's lane, a route, a refusal, a replay, a 304."""

import re

import httpx
import pytest
from fastapi import FastAPI

from app.main import as_served, create_app
from tests.factories import world


def request_id_of(response: httpx.Response) -> str:
    assert response.headers["x-content-type-options"] == "nosniff", response.headers
    assert len(response.headers.get_list("x-request-id")) == 1, response.headers
    return response.headers["x-request-id"]


async def test_every_answer_names_its_request(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan()
    replay = {**w.merchant, "Idempotency-Key": "k-1"}
    body = {"amount": "10.00"}
    answers = [
        await client.get(f"/v1/loans/{loan['id']}", headers=w.merchant),  # the lane's
        await client.get("/v1/loans/nope", headers=w.merchant),
        await client.get("/v1/loans"),
        await client.post(f"/v1/loans/{loan['id']}/payments", json=body, headers=replay),
        await client.post(f"/v1/loans/{loan['id']}/payments", json=body, headers=replay),
        await client.head(f"/v1/borrowers/{loan['borrower_id']}", headers=w.merchant),
        await client.get("/healthz"),
        await client.get("/docs"),
        await client.get("/dashboard"),
    ]
    assert [a.status_code for a in answers] == [200, 404, 401, 201, 201, 200, 200, 200, 200]
    assert answers[4].headers["idempotent-replayed"] == "true"
    ids = [request_id_of(a) for a in answers]
    assert len(set(ids)) == len(ids)  # a replay is a request of its own
    etag = (await client.get(f"/v1/loans/{loan['id']}", headers=w.merchant)).headers["etag"]
    unchanged = await client.get(f"/v1/loans/{loan['id']}",
                                 headers={**w.merchant, "If-None-Match": etag})  # fmt: skip
    assert unchanged.status_code == 304
    request_id_of(unchanged)


@pytest.mark.parametrize("given", ["pos-7f3a.trace:42", "A" * 128])
async def test_a_plain_id_a_client_sends_is_kept(client: httpx.AsyncClient, given: str) -> None:
    answer = await client.get("/v1/business-date", headers={"X-Request-ID": given})
    assert request_id_of(answer) == given


@pytest.mark.parametrize("given", ["two words", "A" * 129, "id\tid", "naïve", ""])
async def test_an_id_that_is_not_plain_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    answer = await client.get("/v1/business-date", headers={"X-Request-ID": given.encode()})
    replaced = request_id_of(answer)
    assert replaced != given
    assert re.fullmatch("[0-9a-f]{16}", replaced)


async def test_an_id_given_twice_is_replaced(client: httpx.AsyncClient) -> None:
    """Which of the two would be the client's? The first was kept (a re-verifier's)."""
    given = [("X-Request-ID", "one"), ("X-Request-ID", "two")]
    replaced = request_id_of(await client.get("/v1/business-date", headers=given))
    assert re.fullmatch("[0-9a-f]{16}", replaced)


async def test_an_unexpected_error_names_its_request() -> None:
    """The 500's detail quotes the id its log lines carry (none expected: this route raises)."""
    app: FastAPI = create_app()

    async def fails() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/fails", fails)
    transport = httpx.ASGITransport(app=as_served(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://loanwatch.test") as c:
        answer = await c.get("/fails", headers={"X-Request-ID": "ticket-991"})
    assert answer.status_code == 500
    assert answer.json()["code"] == "internal_error"
    assert answer.json()["detail"] == "An unexpected error occurred (request ticket-991)."
    assert request_id_of(answer) == "ticket-991"
