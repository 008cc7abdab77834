"""A body over LOANWATCH_MAX_BODY_BYTES is refused with 413 before anything reads it whole,
whether its length is declared or it comes in chunks (app/api/bodies.py)."""

from collections.abc import AsyncIterator

import httpx

from app.config import get_settings
from tests.api.test_validation import row_counts
from tests.factories import world

PROBLEM = "application/problem+json"
JSON = {"content-type": "application/json"}


def oversized_borrower() -> bytes:
    padding = "x" * get_settings().max_body_bytes
    return f'{{"external_id": "big", "name": "{padding}"}}'.encode()


async def test_a_body_declared_too_large_is_refused_unread(client: httpx.AsyncClient) -> None:
    w = await world(client)
    before = await row_counts()
    response = await client.post("/v1/borrowers", content=oversized_borrower(),
                                 headers={**w.merchant, **JSON})  # fmt: skip
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "payload_too_large"
    assert str(get_settings().max_body_bytes) in problem["detail"]
    assert await row_counts() == before


async def test_a_chunked_body_is_counted_as_it_arrives(client: httpx.AsyncClient) -> None:
    w = await world(client)
    before = await row_counts()
    body = oversized_borrower()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65_536):
            yield body[start : start + 65_536]

    response = await client.post("/v1/borrowers", content=chunks(),
                                 headers={**w.merchant, **JSON})  # fmt: skip
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert await row_counts() == before


async def test_a_chunked_body_within_the_limit_is_read_as_sent(client: httpx.AsyncClient) -> None:
    w = await world(client)
    body = (
        b'{"external_id": "chunked", "name": "Chunked Buyer", "phone": "+8613800138000", '
        b'"monthly_income": "3000.00"}'
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await client.post("/v1/borrowers", content=chunks(),
                                 headers={**w.merchant, **JSON})  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["external_id"] == "chunked"


async def test_every_write_documents_413(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "413" in paths["/v1/loans"]["post"]["responses"]
    assert "413" not in paths["/v1/loans"]["get"]["responses"]
