"""/metrics across processes: `loanwatch serve --workers N` answers a scrape with every
worker's counts, and a Celery worker started with --metrics-port serves the webhook attempts
its pool made. Real processes on the test database, as an operator runs them."""

import asyncio
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from app.api_keys.models import Role
from app.config import get_settings
from tests.conftest import REDIS_URL
from tests.factories import api_key, auth, world
from tests.processes import LOANWATCH, clean_env, free_port
from tests.webhooks.receiver import receiving, wait_for


def environment(database_url: str, **extra: str) -> dict[str, str]:
    env = clean_env()
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {**env, "LOANWATCH_DATABASE_URL": database_url, "LOANWATCH_REDIS_URL": REDIS_URL,
            "LOANWATCH_LOG_LEVEL": "warning", **extra}  # fmt: skip


@contextmanager
def started(command: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        process.terminate()
        process.wait(30)


def wait_until_up(url: str, log: Path) -> None:
    for _ in range(600):  # a bound on a loaded machine, not a speed check
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(log.read_text())


def metrics_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("loanwatch-metrics-*"))


def counter_files(folder: Path) -> int:
    return len(list(folder.glob("counter_*.db")))


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_a_scrape_counts_the_requests_of_every_worker(
    postgres_database: str, tmp_path: Path
) -> None:
    dashboard = auth(await api_key(Role.DASHBOARD))
    port, log = free_port(), tmp_path / "serve.log"
    command = [LOANWATCH, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    base = f"http://127.0.0.1:{port}"
    healthz = 'loanwatch_http_requests_total{method="GET",route="/healthz",status="200"}'
    before = metrics_folders()
    with started(command, environment(postgres_database), log):
        await asyncio.to_thread(wait_until_up, f"{base}/healthz", log)
        (folder,) = metrics_folders() - before
        sent = 1
        # Until both workers have served some: requests at once, on connections of their own.
        for _ in range(100):
            async with httpx.AsyncClient(base_url=base) as c:
                answers = await asyncio.gather(*(c.get("/healthz") for _ in range(20)))
            assert {a.status_code for a in answers} == {200}
            sent += len(answers)
            if counter_files(folder) == 2:
                break
        else:
            pytest.fail("one worker served every request")
        async with httpx.AsyncClient(base_url=base, headers=dashboard) as c:
            scrapes = [(await c.get("/metrics")).text for _ in range(6)]
        assert [sample(text, healthz) for text in scrapes] == [sent] * 6
    assert not folder.exists()  # made up for the workers, it goes with them


async def test_a_named_folder_is_emptied_of_an_earlier_start(
    postgres_database: str, tmp_path: Path
) -> None:
    dashboard = auth(await api_key(Role.DASHBOARD))
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"left by a process of an earlier start")
    port, log = free_port(), tmp_path / "serve.log"
    command = [LOANWATCH, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    env = environment(postgres_database, PROMETHEUS_MULTIPROC_DIR=str(folder))
    with started(command, env, log):
        await asyncio.to_thread(wait_until_up, f"http://127.0.0.1:{port}/healthz", log)
        async with httpx.AsyncClient(headers=dashboard) as c:
            assert (await c.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
        assert not (folder / "counter_1.db").exists()
    assert folder.is_dir()  # the operator's folder stays


def test_a_worker_metrics_port_needs_a_shared_folder(
    postgres_database: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [LOANWATCH, "worker", "--metrics-port", str(free_port())],
        env=environment(postgres_database), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "PROMETHEUS_MULTIPROC_DIR" in done.stderr


@pytest.mark.parametrize(
    ("arguments", "told"),
    [
        # A queue nobody publishes to: the worker consumed nothing, and said nothing of it.
        (["--queues", "bogus"], "celery, webhooks, or celery,webhooks"),
        (["--queues", ""], "celery, webhooks, or celery,webhooks"),
        (["--concurrency", "0"], "--concurrency"),
        # Celery's own check was a traceback.
        (["--concurrency", "-1"], "--concurrency"),
    ],
)
def test_a_worker_is_told_an_option_it_cannot_use(
    postgres_database: str, arguments: list[str], told: str
) -> None:
    done = subprocess.run(
        [LOANWATCH, "worker", *arguments],
        env=environment(postgres_database), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert told in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_metrics_port_in_use_is_one_line(postgres_database: str, tmp_path: Path) -> None:
    """It was a traceback of 83 lines; a host that does not resolve was blamed on the
    database (a tester's)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [LOANWATCH, "worker", "--metrics-port", str(port)],
            env=environment(postgres_database, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(f"error: --metrics-port {port} on 127.0.0.1:")


async def test_a_celery_worker_serves_its_webhook_attempts(
    client: httpx.AsyncClient,
    postgres_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_settings(), "in_process_scheduler", False)
    monkeypatch.setattr(get_settings(), "webhook_allow_private_targets", True)
    redis.Redis.from_url(REDIS_URL).flushdb()
    port, log = free_port(), tmp_path / "worker.log"
    command = [LOANWATCH, "worker", "--concurrency", "2", "--queues", "webhooks",
               "--metrics-port", str(port)]  # fmt: skip
    env = environment(postgres_database, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
                      LOANWATCH_WEBHOOK_ALLOW_PRIVATE_TARGETS="true")  # fmt: skip
    (tmp_path / "metrics").mkdir()
    delivered = 'loanwatch_webhook_attempts_total{outcome="delivered"}'
    w = await world(client)
    with receiving() as receiver, started(command, env, log):
        await asyncio.to_thread(wait_until_up, f"http://127.0.0.1:{port}/metrics", log)
        # At 0 before any attempt, once the pool's processes have started: an alert on their
        # rate read "no data" (a tester's).
        at_zero = [f'loanwatch_webhook_attempts_total{{outcome="{outcome}"}} 0.0'
                   for outcome in ("delivered", "failed")]  # fmt: skip
        async with httpx.AsyncClient() as c:
            for _ in range(300):
                text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
                if all(line in text for line in at_zero):
                    break
                await asyncio.sleep(0.1)
        assert all(line in text for line in at_zero), text
        await w.post("/v1/webhook-endpoints", {"url": receiver.url}, headers=w.admin, expect=201)
        for _ in range(3):
            await w.loan()  # each commit wakes the worker
        await wait_for(receiver, 3, 60)  # a bound on a loaded machine, not a speed check
        # The attempts were made in the pool's processes, not in the one serving the port,
        # and counted once each answer was read: after the receiver had the request.
        async with httpx.AsyncClient() as c:
            for _ in range(600):
                text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
                if sample(text, delivered) >= 3:
                    break
                await asyncio.sleep(0.1)
        assert sample(text, delivered) == 3.0, text
        assert len(receiver.received) == 3
