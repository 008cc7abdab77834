"""A real Celery worker (Redis broker, started here) runs a close end to end: every step's
chunks fan out as a chord, one worker process runs many tasks on its one event loop."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
from tests.processes import free_port

CELERY = str(Path(sys.executable).with_name("celery"))


@pytest.fixture
def celery_worker(postgres_database: str, tmp_path: Path) -> Iterator[Path]:
    with _worker(postgres_database, tmp_path) as log:
        yield log


@contextmanager
def _worker(database_url: str, tmp_path: Path) -> Iterator[Path]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    log = tmp_path / "worker.log"
    env = {**os.environ, "LOANWATCH_DATABASE_URL": database_url,
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
    return await wait_for_the_run(w, as_of)


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


class DatabaseRelay:
    """A TCP relay to PostgreSQL that can be cut and restored, as a worker sees a database
    restart or a network cut: its connections dropped, new ones refused until it is back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        assert self._listener is not None
        # Shut down first: closed alone, a socket another thread waits to accept on listens on.
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in list(self._open):
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._open.clear()

    async def cut_for_a_second(self) -> None:
        self.cut()
        await asyncio.sleep(1)
        self.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(self.target)
            self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


async def test_a_close_on_celery_waits_out_a_database_cut(
    client: httpx.AsyncClient,
    postgres_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A close whose worker lost the database for a second, as it started, within a step or
    between two, finishes once it is back. Its run's start raised, unretried, and its run
    stayed `running` with no error, refusing every close 409 for the stale time (10 minutes):
    a tester's."""
    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    relay = DatabaseRelay(("127.0.0.1", 5432))
    relay.start()
    assert ":5432/" in postgres_database
    with _worker(postgres_database.replace(":5432/", f":{relay.port}/"), tmp_path) as log:
        w = await world(client, grace_days=3, late_fee={"kind": "fixed", "amount": "20.00"})
        loans = [await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
                 for _ in range(12)]  # fmt: skip

        relay.cut()  # down as the close starts
        await w.post("/v1/close-runs", {"as_of": "2026-02-12"}, headers=w.admin, expect=202)
        await asyncio.sleep(1)
        relay.start()
        first = await wait_for_the_run(w, "2026-02-12")
        assert (first["status"], first["attempts"]) == ("succeeded", 1), first

        await w.post("/v1/close-runs", {"as_of": "2026-02-13"}, headers=w.admin, expect=202)
        for _ in range(1200):  # cut in its middle: 12 chunks a step, one loan each
            run = await w.get("/v1/close-runs/2026-02-13", headers=w.admin)
            if "late_fees" in run["steps"]:
                break
            await asyncio.sleep(0.02)
        await relay.cut_for_a_second()
        second = await wait_for_the_run(w, "2026-02-13")
        assert (second["status"], second["attempts"]) == ("succeeded", 1), second
        assert second["counts"]["late_fees_assessed"] == 12  # each chunk's, once
        for loan in loans:
            got = await w.get(f"/v1/loans/{loan['id']}")
            assert got["balances"]["fees_outstanding"] == "20.00"

        # Cut between two steps: the step recorded, the next not begun (a re-verifier's: the
        # task that recorded one step and began the next failed the close, eight times in
        # eight). A poll that misses the moment cuts a chunk instead, which waits as well.
        await w.post("/v1/close-runs", {"as_of": "2026-02-14"}, headers=w.admin, expect=202)
        for _ in range(5000):
            steps = (await w.get("/v1/close-runs/2026-02-14", headers=w.admin))["steps"]
            if steps and all(entry["status"] == "succeeded" for entry in steps.values()):
                break
            await asyncio.sleep(0.002)
        await relay.cut_for_a_second()
        third = await wait_for_the_run(w, "2026-02-14")
        assert (third["status"], third["attempts"]) == ("succeeded", 1), third
        text = await asyncio.to_thread(log.read_text)
    assert text.count("lost the database") >= 3, text
    relay.cut()


async def wait_for_the_run(w: World, as_of: str) -> dict[str, Any]:
    for _ in range(1200):  # a bound on a loaded machine, not a speed check
        run = await w.get(f"/v1/close-runs/{as_of}", headers=w.admin)
        if run["status"] in ("succeeded", "failed"):
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"close {as_of} did not finish: {run}")
