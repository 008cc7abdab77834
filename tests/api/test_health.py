import logging
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from app.api.auth import principals
from app.api_keys.models import Role
from app.config import get_settings
from app.db import database
from tests.factories import api_key, auth, world


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_database_and_redis(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_readyz_reports_an_unreachable_broker(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    monkeypatch.setattr(get_settings(), "redis_url", "redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="loanwatch"):
        response = await client.get("/readyz")
    assert response.status_code == 503
    # The answer, open to anyone, names the class; the log tells the operator why (it did not:
    # a tester's).
    assert response.json()["checks"]["broker"] == "unavailable: ConnectionError"
    assert "the broker does not answer: ConnectionError: " in caplog.text
    assert "127.0.0.1:1" in caplog.text
    # An answer the document describes, as every other (a tester's: it listed 200 alone).
    described = (await client.get("/openapi.json")).json()["paths"]["/readyz"]["get"]
    assert set(described["responses"]) == {"200", "503"}


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/loans" in spec["paths"]
    for page in ("/docs", "/redoc"):
        html = await client.get(page)
        assert html.status_code == 200
        # Swagger UI takes a key: no other site frames it (any could: a re-verifier's).
        assert html.headers["x-frame-options"] == "DENY"
        assert html.headers["content-security-policy"] == "frame-ancestors 'none'"
        # Every script and style sheet the page loads comes from the API itself: a lender's
        # internal network cannot reach a CDN.
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert assets
        assert all(asset.startswith("/docs/assets/") for asset in assets), assets
        for asset in assets:
            served = await client.get(asset)
            assert served.status_code == 200, asset
            assert served.content
    assert "x-frame-options" not in (await client.get("/openapi.json")).headers


@pytest.fixture(params=["refused", "silent"])
def unanswering_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database URL whose host refuses connections, or takes them and never answers (a
    host gone from the network: asyncpg waited 60 s and SQLAlchemy passed its TimeoutError
    on, a 500; a re-verifier's)."""
    if request.param == "refused":
        yield "postgresql+asyncpg://postgres@127.0.0.1:1/gone"
        return
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{silent.getsockname()[1]}/gone"


async def test_metrics_are_served_through_a_database_outage(
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    unanswering_database: str,
) -> None:
    """A scrape during an outage, when the counts matter most, was answered 503: its key could
    not be looked up once the principal cache's 5 s had passed, nor the book's gauges read. A
    key this process has seen is taken as it was then; the outage is a gauge of its own."""
    w = await world(client)
    dashboard = auth(await api_key(Role.DASHBOARD))
    never_used = auth(await api_key(Role.DASHBOARD))
    before = await client.get("/metrics", headers=dashboard)
    assert "loanwatch_database_up 1.0" in before.text
    assert (await client.get("/metrics", headers=w.merchant)).status_code == 403
    try:
        monkeypatch.setattr(get_settings(), "database_url", unanswering_database)
        monkeypatch.setattr(get_settings(), "db_connect_timeout_seconds", 0.5)
        await database.dispose()
        with caplog.at_level(logging.WARNING, logger="loanwatch"):
            cached = await client.get("/metrics", headers=dashboard)  # the key still cached
            monkeypatch.setattr(principals, "_clock", lambda: time.monotonic() + 3600)
            looked_up = await client.get("/metrics", headers=dashboard)
        for during in (cached, looked_up):
            assert during.status_code == 200, during.text
            assert "loanwatch_database_up 0.0" in during.text
            assert 'loanwatch_http_requests_total{method="GET",route="/metrics",status="200"}' in (
                during.text
            )
            assert "loanwatch_webhook_backlog" not in during.text
        assert "/metrics without the book's gauges: the database does not answer" in caplog.text
        assert "/metrics without the book's gauges: the key's look-up lost" in caplog.text
        # Neither a key unknown to this process nor a role that may not read it.
        unknown = await client.get("/metrics", headers=never_used)
        assert (unknown.status_code, unknown.json()["code"]) == (503, "database_unavailable")
        assert (await client.get("/metrics", headers=w.merchant)).status_code == 403
        elsewhere = await client.get("/v1/loans", headers=dashboard)
        assert (elsewhere.status_code, elsewhere.json()["code"]) == (503, "database_unavailable")
    finally:
        monkeypatch.undo()
        await database.dispose()
    assert "loanwatch_database_up 1.0" in (await client.get("/metrics", headers=dashboard)).text


async def test_a_write_with_an_idempotency_key_meets_an_outage_with_a_503(
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    unanswering_database: str,
) -> None:
    """The key is looked up before the claim: its failure went on up the stack, whose 503
    came with a traceback in the log (a re-verifier's). Nothing ran, so a retry runs."""
    admin = auth(await api_key(Role.ADMIN))
    try:
        monkeypatch.setattr(get_settings(), "database_url", unanswering_database)
        monkeypatch.setattr(get_settings(), "db_connect_timeout_seconds", 0.5)
        monkeypatch.setattr(principals, "_clock", lambda: time.monotonic() + 3600)
        await database.dispose()
        with caplog.at_level(logging.WARNING, logger="loanwatch"):
            answer = await client.post("/v1/merchants", json={"name": "Acme"},
                                       headers={**admin, "Idempotency-Key": "m-1"})  # fmt: skip
        assert (answer.status_code, answer.json()["code"]) == (503, "database_unavailable")
        assert "POST /v1/merchants lost its database connection: " in caplog.text
    finally:
        monkeypatch.undo()
        await database.dispose()
