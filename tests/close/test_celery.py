"""A real Celery worker (Redis broker, started here) runs a close end to end: every step's
chunks fan out as a chord, one worker process runs many tasks on its one event loop."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app import clock
from app.close import service as close_service
from app.config import get_settings
from app.db import session_scope
from tests.conftest import REDIS_URL
from tests.factories import World, world

CELERY = str(Path(sys.executable).with_name("celery"))


@pytest.fixture
def celery_worker(postgres_database: str, tmp_path: Path) -> Iterator[Path]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    log = tmp_path / "worker.log"
    env = {**os.environ, "LOANWATCH_DATABASE_URL": postgres_database,
           "LOANWATCH_REDIS_URL": REDIS_URL, "LOANWATCH_CLOSE__CHUNK_SIZE": "1",
           "LOANWATCH_CLOSE__NIGHTLY_RETRY_SECONDS": "0.2"}  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            [CELERY, "-A", "workers.celery_app:celery", "worker", "--concurrency=1",
             "--loglevel=info", "--without-gossip", "--without-mingle"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        from workers.celery_app import celery

        for _ in range(60):
            if celery.control.ping(timeout=0.5):
                break
        else:
            pytest.fail(log.read_text())
        yield log
    finally:
        process.terminate()
        process.wait(20)


async def close_on_celery(w: World, as_of: str) -> dict[str, Any]:
    response = await w.post("/v1/close-runs", {"as_of": as_of}, headers=w.admin, expect=202)
    assert (response.json()["status"], response.json()["queued"]) == ("running", True)
    for _ in range(1200):  # a bound on a loaded machine, not a speed check
        run = await w.get(f"/v1/close-runs/{as_of}", headers=w.admin)
        if run["status"] in ("succeeded", "failed"):
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"close {as_of} did not finish: {run}")


async def test_a_celery_worker_runs_the_close(
    client: httpx.AsyncClient, celery_worker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})  # fmt: skip
    loans = [await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
             for _ in range(3)]  # fmt: skip
    first = await close_on_celery(w, "2026-02-12")
    assert first["status"] == "succeeded", first
    run = await close_on_celery(w, "2026-02-14")  # the 13th is caught up first
    assert run["status"] == "succeeded", run
    assert run["steps"]["late_fees"]["chunks"] == 3
    caught_up = await w.get("/v1/close-runs/2026-02-13", headers=w.admin)
    assert caught_up["status"] == "succeeded"
    # The 13th, the last day of grace, charged the fees.
    assert caught_up["counts"]["late_fees_assessed"] == 3
    for loan in loans:
        got = await w.get(f"/v1/loans/{loan['id']}")
        assert (got["days_past_due"], got["bucket"]) == (4, "1-30")
        assert got["balances"]["fees_outstanding"] == "20.00"
    # An on-demand risk run fans out the same way: one task per chunk, totals on the run.
    started = await w.post("/v1/risk/runs", {"as_of": "2026-02-14"}, headers=w.admin,
                           expect=202)  # fmt: skip
    assert started.json()["status"] == "pending"
    for _ in range(1200):  # a bound on a loaded machine, not a speed check
        risk_run = await w.get(f"/v1/risk/runs/{started.json()['id']}", headers=w.admin)
        if risk_run["status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.1)
    assert risk_run["status"] == "succeeded", risk_run
    assert risk_run["chunks"] == 3
    assert risk_run["counts"]["loans_evaluated"] == 3
    assert "grades_changed" in risk_run["counts"]  # the second pass ran, over the workers
    log = await asyncio.to_thread(celery_worker.read_text)
    assert "attached to a different loop" not in log
    assert "close.chunk" in log
    assert "close.step_done" in log
    assert "risk.chunk" in log
    assert "risk.grade_chunk" in log
    assert "risk.run_done" in log


async def test_the_nightly_task_waits_for_a_manual_close(
    client: httpx.AsyncClient, celery_worker: Path
) -> None:
    """Beat's close meets a manual close still running: the task retries until it is done,
    then closes yesterday."""
    from workers.celery_app import celery

    w = await world(client)
    yesterday = clock.today() - timedelta(days=1)
    async with session_scope() as session:  # the manual close, queued
        await close_service.plan_close(session, as_of=yesterday - timedelta(days=1))
    celery.send_task("close.nightly")
    for _ in range(600):  # a bound on a loaded machine, not a speed check
        log = await asyncio.to_thread(celery_worker.read_text)
        if log.count("nightly close waits") >= 2:
            break
        await asyncio.sleep(0.1)
    assert log.count("nightly close waits") >= 2, log
    await close_service.run_dates_in_process([yesterday - timedelta(days=1)])
    for _ in range(1200):
        run = (await client.get(f"/v1/close-runs/{yesterday}", headers=w.admin)).json()
        if run.get("status") in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.1)
    assert (run["status"], run["attempts"]) == ("succeeded", 1), run
