"""GET /v1/loans/{id} answered by its lane (app/loans/read_lane.py): the route's own bytes, and
every request the lane is not sure of left to the whole stack."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.api.auth import Principal, hash_key, principals
from app.api_keys.models import Role
from app.loans.read_lane import LoanReadLane
from app.ops.metrics import HTTP_REQUESTS
from tests.factories import api_key, auth, world


@pytest.fixture
async def stack(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app without the lane in front: its middlewares and routes."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://loanwatch.test") as c:
        yield c


class Stack:
    """What the lane hands on to: counts the requests, answers 599."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_the_lane_answers_what_the_route_would_byte_for_byte(
    client: httpx.AsyncClient, stack: httpx.AsyncClient, app: FastAPI
) -> None:
    w = await world(
        client,
        annual_interest_rate="0.1299",
        late_fee={"kind": "fixed", "amount": "20.00"},
        origination_fee={"kind": "percent", "percent": "0.02", "collection": "spread"},
    )
    late = await w.loan(principal="1200.00", term=6, disbursed_on="2026-01-31")
    await w.post("/v1/close-runs", {"as_of": "2026-04-02"}, headers=w.admin, expect=201)
    await w.pay(late["id"], "150.00", "2026-04-01")
    paid_off = await w.loan(principal="300.00", term=3)
    await w.pay(paid_off["id"], (await w.get(f"/v1/loans/{paid_off['id']}"))["balances"][
        "payoff_amount"])  # fmt: skip
    cancelled = await w.loan()
    await w.post(f"/v1/loans/{cancelled['id']}/cancel", {"reason": "returned"}, expect=200)
    dashboard = auth(await api_key(Role.DASHBOARD))
    async with client_of(LoanReadLane(app)) as lane_alone:  # unstamped, as the stack is
        for loan in (late, paid_off, cancelled):
            path = f"/v1/loans/{loan['id']}"
            for key in (w.merchant, w.admin, dashboard):
                await lane_alone.get(path, headers=key)  # the key now known to the lane
                lane = await lane_alone.get(path, headers=key)
                route = await stack.get(path, headers=key)
                assert lane.status_code == 200, lane.text
                assert (lane.status_code, lane.headers.multi_items(), lane.content) == (
                    route.status_code, route.headers.multi_items(), route.content,
                )  # fmt: skip
                for tags in (lane.headers["etag"], f'"stale", {lane.headers["etag"]}', '"stale"'):
                    asked = {**key, "If-None-Match": tags}
                    lane = await lane_alone.get(path, headers=asked)
                    route = await stack.get(path, headers=asked)
                    assert (lane.status_code, lane.headers.multi_items(), lane.content) == (
                        route.status_code, route.headers.multi_items(), route.content,
                    )  # fmt: skip
    assert lane.status_code == 200  # the last asked a stale tag


async def test_the_lane_answers_without_the_stack_and_counts_the_request(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    loan = await w.loan()
    path = f"/v1/loans/{loan['id']}"
    expected = await client.get(path, headers=w.merchant)  # and the key is known from now
    counted = HTTP_REQUESTS.labels("GET", "/v1/loans/{loan_id}", "200")
    before = counted._value.get()
    unreachable = Stack()
    async with client_of(LoanReadLane(unreachable)) as lane:
        answered = await lane.get(path, headers=w.merchant)
    assert unreachable.reached == []
    assert (answered.status_code, answered.content) == (200, expected.content)
    assert answered.headers["etag"] == expected.headers["etag"]
    assert counted._value.get() == before + 1


async def test_what_the_lane_is_not_sure_of_goes_to_the_stack(client: httpx.AsyncClient) -> None:
    w = await world(client)
    loan = await w.loan()
    other = await world(client)
    path = f"/v1/loans/{loan['id']}"
    await client.get(path, headers=w.merchant)
    await client.get(path, headers=other.merchant)  # 404, and the key known from now
    gateway = await api_key(Role.GATEWAY)
    principals.put(hash_key(gateway), Principal("key_gateway", Role.GATEWAY))
    key = w.merchant["Authorization"]
    refused: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("HEAD", path, [("Authorization", key)]),
        ("POST", path, [("Authorization", key)]),
        ("GET", f"{path}?expand=schedule", [("Authorization", key)]),
        ("GET", f"{path}/schedule", [("Authorization", key)]),
        ("GET", f"{path}/", [("Authorization", key)]),
        ("GET", "/v1/loans/", [("Authorization", key)]),
        ("GET", f"{path}%00", [("Authorization", key)]),
        ("GET", path, [("Authorization", key), ("Authorization", key)]),
        ("GET", path, [("Authorization", key), *[("Content-Type", "text/plain")] * 2]),
        ("GET", path, [("Authorization", key), ("Content-Length", "2")]),
        ("GET", path, [("Authorization", key), ("Transfer-Encoding", "chunked")]),
        ("GET", path, []),
        ("GET", path, [("Authorization", f"Basic {key}")]),
        ("GET", path, [("Authorization", "Bearer lw_nobody")]),
        ("GET", path, [("Authorization", f"Bearer {gateway}")]),
        ("GET", path, [("Authorization", other.merchant["Authorization"])]),
        ("GET", "/v1/loans/loan_nothing", [("Authorization", key)]),
    ]
    for method, target, headers in refused:
        stack = Stack()
        async with client_of(LoanReadLane(stack)) as lane:
            content = b"{}" if ("Content-Length", "2") in headers else None
            answered = await lane.request(method, target, headers=headers, content=content)
        assert (answered.status_code, len(stack.reached)) == (599, 1), (method, target, headers)
