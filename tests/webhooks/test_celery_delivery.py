"""Webhook delivery through real Celery workers: woken after commit, and nothing lost while
the broker is down."""

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from app.config import get_settings
from tests.conftest import REDIS_URL
from tests.factories import world
from tests.processes import free_port
from tests.webhooks.receiver import receiving, wait_for

CELERY = str(Path(sys.executable).with_name("celery"))


@contextmanager
def celery_worker(
    database_url: str, broker: str, folder: Path, *, beat: bool, sweep: float
) -> Iterator[Path]:
    log = folder / f"worker-{time.monotonic_ns()}.log"
    env = {**os.environ, "LOANWATCH_DATABASE_URL": database_url, "LOANWATCH_REDIS_URL": broker,
           "LOANWATCH_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
           "LOANWATCH_WEBHOOK_SWEEP_SECONDS": str(sweep)}  # fmt: skip
    command = [CELERY, "-A", "workers.celery_app:celery", "worker", "--concurrency=1",
               "--loglevel=info", "--without-gossip", "--without-mingle"]  # fmt: skip
    if beat:
        command += ["--beat", "--schedule", str(folder / "beat-schedule")]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(1200):  # a bound on a loaded machine (10 s was too short), not a speed check
            if "ready." in log.read_text():
                break
            time.sleep(0.1)
        else:
            pytest.fail(log.read_text())
        yield log
    finally:
        process.terminate()
        process.wait(20)


def start_redis(port: int) -> "subprocess.Popen[bytes]":
    """A broker of this test's own, so stopping it disturbs nothing else."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


async def test_a_commit_wakes_a_celery_worker(
    client: httpx.AsyncClient,
    postgres_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", True)
    redis.Redis.from_url(REDIS_URL).flushdb()
    w = await world(client)
    with (
        receiving() as receiver,
        celery_worker(postgres_database, REDIS_URL, tmp_path, beat=False, sweep=3600),
    ):
        await w.post("/v1/webhook-endpoints", {"url": receiver.url}, headers=w.admin, expect=201)
        await w.loan()  # no sweep runs: only the wake-up after commit can deliver this
        await wait_for(receiver, 1, 15)
        assert receiver.received[0].json["type"] == "loan.created"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_events_written_while_the_broker_is_down_are_delivered(
    client: httpx.AsyncClient,
    postgres_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", True)
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port)
    w = await world(client)
    try:
        with (
            receiving() as receiver,
            celery_worker(postgres_database, broker, tmp_path, beat=True, sweep=1),
        ):
            await w.post("/v1/webhook-endpoints", {"url": receiver.url}, headers=w.admin,
                         expect=201)  # fmt: skip
            server.terminate()
            server.wait(10)
            for _ in range(3):
                await w.loan()  # committed while the broker is down
            await asyncio.sleep(2)
            assert receiver.received == []
            server = start_redis(port)
            await wait_for(receiver, 3, 60)
            assert len({r.headers["webhook-id"] for r in receiver.received}) == 3
    finally:
        server.terminate()
        server.wait(10)


def test_wake_ups_from_many_processes_queue_one_drain() -> None:
    """Five API processes commit events while no drain has started: one wake-up is queued
    (they piled up by the hundred under load, each a drain of up to a minute, and the close
    waited behind them); once a drain starts, the next commit queues another."""
    from app.webhooks import wakeup

    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    try:
        for _ in range(5):
            wakeup._send_dispatch_task()  # what each process does after its commit
        assert broker.llen("webhooks") == 1  # delivery's own queue, not the close's
        wakeup.dispatch_started()
        wakeup._send_dispatch_task()
        assert (broker.llen("webhooks"), broker.llen("celery")) == (2, 0)
    finally:
        broker.flushdb()
