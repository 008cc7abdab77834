"""A body declared as anything but JSON, or not declared at all, is refused with 415 before
anything reads it (app/api/bodies.py); JSON and its +json forms are read."""

import gzip
from collections.abc import AsyncIterator

import httpx
import pytest

from app.api_keys.models import Role
from tests.api.test_validation import row_counts
from tests.factories import api_key, auth, world

BORROWER = b'{"external_id": "c-1", "name": "Li Wei", "phone": "+8613800138000"}'


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml", "text/json", "application/jsonp", "", None,
     # JSON is UTF-8 (RFC 8259): a body declared in another encoding was read as UTF-8.
     "application/json; charset=UTF-16", "application/json;charset=latin-1",
     'application/json; charset="iso-8859-1"'],
)  # fmt: skip
async def test_a_body_not_declared_json_is_refused(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    w = await world(client)
    before = await row_counts()
    declared = {} if content_type is None else {"content-type": content_type}
    headers = {**w.merchant, **declared, "idempotency-key": "k-1"}
    response = await client.post("/v1/borrowers", content=BORROWER, headers=headers)
    assert response.request.headers.get("content-type") == content_type
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["accept-post"] == "application/json"
    problem = response.json()
    assert problem["code"] == "unsupported_media_type"
    assert "application/json" in problem["detail"]
    assert await row_counts() == before
    # Nothing was claimed either: the same key with a JSON body is a first request.
    retried = await client.post("/v1/borrowers", content=BORROWER,
                                headers={**w.merchant, "content-type": "application/json",
                                         "idempotency-key": "k-1"})  # fmt: skip
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers


async def test_the_caller_is_checked_before_the_media_type(client: httpx.AsyncClient) -> None:
    """A caller with no key, or of a role the route refuses, is told so (401, 403), not which
    media type the endpoint takes (it was 415: a tester's)."""
    w = await world(client)
    plain = {"content-type": "text/plain"}
    for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 401),
                            (auth(await api_key(Role.DASHBOARD)), 403), (w.merchant, 403),
                            (w.admin, 415)):  # fmt: skip
        response = await client.post("/v1/merchants", content=b"x", headers={**headers, **plain})
        assert response.status_code == status, (headers, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    unknown = await client.post("/v1/nowhere", content=b"x", headers=plain)
    assert unknown.status_code == 404  # no route: its body is nobody's (a re-verifier's)


async def test_a_patch_not_declared_json_names_what_it_takes(client: httpx.AsyncClient) -> None:
    w = await world(client)
    borrower = await w.borrower()
    response = await client.patch(f"/v1/borrowers/{borrower['id']}", content=b"credit_limit=1",
                                  headers={**w.admin, "content-type": "text/plain"})  # fmt: skip
    assert response.status_code == 415
    assert response.headers["accept-patch"] == "application/json"
    assert (await w.get(f"/v1/borrowers/{borrower['id']}"))["credit_limit"] == borrower[
        "credit_limit"
    ]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON",
     "application/merge-patch+json", 'application/json; charset="UTF-8"',
     "application/json;charset=utf8"],
)  # fmt: skip
async def test_json_in_any_of_its_forms_is_read(
    client: httpx.AsyncClient, content_type: str
) -> None:
    w = await world(client)
    headers = {**w.merchant, "content-type": content_type}
    response = await client.post("/v1/borrowers", content=BORROWER, headers=headers)
    assert response.status_code == 201, response.text


async def test_a_post_without_a_body_needs_no_media_type(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan()
    response = await client.post(f"/v1/loans/{loan['id']}/cancel",
                                 headers={**w.merchant, "content-type": "text/plain"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"


async def test_every_write_documents_415(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "415" in paths["/v1/loans"]["post"]["responses"]
    assert "415" not in paths["/v1/loans"]["get"]["responses"]


@pytest.mark.parametrize("coding", ["gzip", "br, x-unknown", "GZIP", "identity, deflate"])
async def test_a_body_declared_encoded_is_refused(client: httpx.AsyncClient, coding: str) -> None:
    """No content coding is applied to a request body: declared gzip and sent plain, it was
    taken as it came; sent gzip, it was read as text (a tester's). 415, the codings taken
    named (RFC 9110 §12.5.3)."""
    w = await world(client)
    before = await row_counts()
    for body in (BORROWER, gzip.compress(BORROWER)):
        response = await client.post("/v1/borrowers", content=body, headers={
            **w.merchant, "content-type": "application/json", "content-encoding": coding,
        })  # fmt: skip
        assert response.status_code == 415, response.text
        assert response.headers["accept-encoding"] == "identity"
        assert response.json()["code"] == "unsupported_media_type"
        assert coding.lower().replace("identity, ", "") in response.json()["detail"]
    assert await row_counts() == before
    identity = {**w.merchant, "content-type": "application/json", "content-encoding": "identity"}
    created = await client.post("/v1/borrowers", content=BORROWER, headers=identity)
    assert created.status_code == 201, created.text


async def test_a_notification_declared_encoded_is_refused_whoever_it_names(
    client: httpx.AsyncClient,
) -> None:
    """A gateway's notification may leave its media type out, not declare a coding: gzip was
    refused as text holding U+0000 (a re-verifier's). The same 415 whether the name is
    registered or not; and a body declared in another charset as well is told both."""
    w = await world(client)
    await w.post("/v1/gateways", {"name": "alipay"}, headers=w.admin, expect=201)
    body = gzip.compress(b'{"type": "debit.failed", "data": {}}')
    answers = [
        await client.post(f"/v1/inbound/gateways/{name}", content=body,
                          headers={"content-encoding": "gzip"})
        for name in ("alipay", "nobody")
    ]  # fmt: skip
    assert [a.status_code for a in answers] == [415, 415]
    assert answers[0].json() == answers[1].json()
    assert answers[0].headers["accept-encoding"] == "identity"
    latin = await client.post("/v1/borrowers", content=BORROWER, headers={
        **w.merchant, "content-type": "application/json; charset=latin-1",
        "content-encoding": "gzip",
    })  # fmt: skip
    assert latin.status_code == 415, latin.text
    assert latin.headers["accept-encoding"] == "identity"
    assert "gzip" in latin.json()["detail"]


async def test_an_empty_body_sent_in_chunks_is_no_body(client: httpx.AsyncClient) -> None:
    """A POST with no body needs no media type, however the client frames the nothing it
    sends: chunked and empty, a cancel was told its body was of no media type (a
    re-verifier's). Chunked and not empty, it is a body like any other."""
    w = await world(client)
    loan = await w.loan()

    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    path = f"/v1/loans/{loan['id']}/cancel"
    sent = await client.post(path, content=chunks(b"x"), headers=w.merchant)
    assert sent.request.headers["transfer-encoding"] == "chunked"
    assert sent.status_code == 415, sent.text
    cancelled = await client.post(path, content=chunks(), headers=w.merchant)
    assert cancelled.request.headers["transfer-encoding"] == "chunked"
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate, chunked", "xyz, chunked"])
async def test_a_body_in_a_transfer_coding_other_than_chunked_is_refused(
    client: httpx.AsyncClient, coding: str
) -> None:
    """Only chunked is decoded, by the server: declared gzip and sent plain, a payment was
    booked as it came (a tester's). 501 (RFC 9112 §6.1), before the caller or the route."""
    w = await world(client)
    before = await row_counts()
    for headers in ({**w.merchant, "content-type": "application/json"}, {}):
        response = await client.post(
            "/v1/borrowers", content=BORROWER, headers={**headers, "transfer-encoding": coding}
        )
        assert response.status_code == 501, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "not_implemented"
        assert coding.removesuffix(", chunked") in response.json()["detail"]
    assert await row_counts() == before
