"""Webhook delivery on PostgreSQL: deliveries/s of one dispatcher process against a bare
``httpx`` + HMAC loop, and the drain time of a 100,000-event backlog with 1 and 2 workers.

One run, start to finish:

1. starts ``bench/webhook_receiver.py`` (raw asyncio, one process, HMAC-verifies every request
   and counts distinct ``webhook-id``) and measures its capacity alone with ``wrk`` (signed
   1 KB POSTs);
2. the bare loop (``_bare``, its own process), each body JSON-encoded and signed (hmac-sha256,
   Standard Webhooks headers), ``--bare-n`` deliveries, ``--bare-reps`` times, before and after
   the dispatcher, in batches of 500, with no database, in the models of ``--bare-models``:
   ``pool`` is plain httpx (8 ``httpx.AsyncClient`` x 6 connections used round-robin, each
   batch sent with ``asyncio.gather``: the dispatcher's earlier model); ``shared`` is the
   dispatcher's sending half as it is now (its one client from ``app.webhooks.transport``,
   ``dispatcher.IN_FLIGHT`` requests in flight);
3. drops and creates ``loanwatch_hookbench``, ``loanwatch migrate``, one endpoint through
   ``app.webhooks.service.create_endpoint`` (admin principal, pattern ``*``, the receiver's
   URL), then ``--events`` events of ~1 KB (payload as sent) through
   ``app.events.service.emit_many`` in batches of ``--batch``, one transaction per batch
   (timed, split into event INSERT and ``fan_out``), then ``VACUUM ANALYZE``;
4. for each mode, after resetting every delivery to pending (``TRUNCATE webhook_attempt``,
   ``VACUUM FULL ANALYZE``) and waiting for the 1-minute load to fall below ``--max-load``:
   ``direct1``/``direct2`` run ``app.webhooks.dispatcher.drain()`` in 1 or 2 separate processes
   (started, imported, then released together); ``celery1``/``celery2`` start
   ``celery -A workers.celery_app:celery worker --concurrency=N`` on Redis db 11, send N
   ``webhooks.dispatch`` tasks, and then one every 2 s with ``expires=2`` as beat's sweep does,
   until nothing is pending. The drain time runs from the release to the last
   ``delivered_at``;
5. checks each drain: every delivery ``delivered`` with one attempt, attempt rows ==
   deliveries, status 200, and at the receiver requests == distinct ids == deliveries with no
   bad signature;
6. with ``--profile S``: one more (unmeasured) ``direct1`` drain with ``py-spy record`` on the
   dispatcher for S seconds, summarised by inclusive and self time.

Environment of every Loanwatch process: ``LOANWATCH_DATABASE_URL`` (the scratch database),
``LOANWATCH_REDIS_URL=redis://127.0.0.1:6379/11``, ``LOANWATCH_WEBHOOK_ALLOW_PRIVATE_TARGETS=
true``. ``--app-path DIR`` puts DIR first on ``PYTHONPATH`` of the dispatcher processes (to
measure a prototype copy of ``app/``).

    .venv/bin/python bench/webhook_bench.py --profile 20
    .venv/bin/python bench/webhook_bench.py --modes direct1 --reuse --skip-wrk

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), Redis on 127.0.0.1:6379 and
wrk. Results go to ``--out`` (results.json, report.md, logs, profile).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATABASE = "loanwatch_hookbench"
DATABASE_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/11"
EVENT_TYPE = "payment.received"
BODY_BYTES = 1024
# The dispatcher's concurrency model (app/webhooks/dispatcher.py, webhook_batch_size).
CLIENTS, CONNECTIONS_PER_CLIENT, BATCH = 8, 6, 500
LANES = 48  # the prototype's model: lanes of one client with one connection
WARMUP = 48  # requests before the clock starts (connections opened), in every model
MODES = ("direct1", "direct2", "celery1", "celery2")


def loanwatch_env(app_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LOANWATCH_DATABASE_URL=DATABASE_URL,
        LOANWATCH_REDIS_URL=REDIS_URL,
        LOANWATCH_WEBHOOK_ALLOW_PRIVATE_TARGETS="true",
        LOANWATCH_LOG_LEVEL="warning",
    )
    if app_path:  # a prototype copy of app/ outside the repo
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [app_path, env.get("PYTHONPATH")]))
    return env


# -- the events ---------------------------------------------------------------------------


def event_data(i: int, pad: int) -> dict[str, Any]:
    """A payment.received-like event; ``note`` pads the delivered body to ~1 KB."""
    return {
        "loan_id": f"ln_{i:026d}",
        "payment_id": f"pm_{i:026d}",
        "borrower_id": f"br_{i % 50_000:026d}",
        "merchant_id": "mc_00000000000000000000000001",
        "amount": "535.88",
        "currency": "CNY",
        "channel": "pos",
        "external_ref": f"rcpt-{i}",
        "received_at": "2026-11-30T08:15:00Z",
        "allocation": {"fees": "0.00", "interest": "64.95", "principal": "470.93"},
        "note": "x" * pad,
    }


def body_for(type_: str, created_at: datetime, data: dict[str, Any], position: int) -> bytes:
    """The same bytes as ``app.webhooks.dispatcher.payload``."""
    body = {
        "type": type_,
        "timestamp": created_at.isoformat().replace("+00:00", "Z"),
        "data": {**data, "sequence": position},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def padding() -> int:
    """The ``note`` length that makes a delivered body BODY_BYTES long (position ~50,000)."""
    now = datetime.now(UTC)
    bare = len(body_for(EVENT_TYPE, now, event_data(50_000, 0), 50_000))
    return max(0, BODY_BYTES - bare)


# -- the bare loop (its own process) --------------------------------------------------------


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def bare_loop(url: str, secret: str, n: int, model: str = "pool") -> dict[str, Any]:
    """Deliveries without a database: same batches, payload encoding and signing as the
    dispatcher. ``pool``: plain httpx, 8 clients x 6 connections, the batch gathered at once
    (the dispatcher's earlier model); ``shared``: the dispatcher's own client
    (``app.webhooks.transport``) with ``dispatcher.IN_FLIGHT`` lanes; ``lanes``: 48 plain
    clients of one connection, each sending one request at a time."""
    import httpx

    key = base64.b64decode(secret.removeprefix("whsec_"))
    timeout = httpx.Timeout(10.0, connect=3.0)
    lanes = LANES
    if model == "shared":
        from app.webhooks import dispatcher, transport

        lanes = dispatcher.IN_FLIGHT
        clients = [
            transport.make_client(
                timeout=10.0,
                shards=dispatcher.SHARDS,
                connections_per_shard=dispatcher.CONNECTIONS_PER_SHARD,
            )
        ]
    else:
        if model == "lanes":
            count, limits = LANES, httpx.Limits(max_connections=1, max_keepalive_connections=1)
        else:
            count, limits = CLIENTS, httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT)
        clients = [
            httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)
            for _ in range(count)
        ]
    turn = itertools.count()
    pad = padding()
    created_at = datetime.now(UTC)
    run = f"{time.time_ns():x}"
    failures = 0

    async def send(i: int, client: httpx.AsyncClient | None = None) -> int:
        msg_id = f"evt_bare_{run}_{i}"
        body = body_for(EVENT_TYPE, created_at, event_data(i, pad), i)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "Loanwatch-Webhooks/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, msg_id, timestamp, body),
        }
        client = client or clients[next(turn) % len(clients)]
        response = await client.post(url, content=body, headers=headers)
        _ = response.text[:500]
        return response.status_code

    async def lane(client: httpx.AsyncClient, queue: deque[int]) -> int:
        failed = 0
        while queue:
            failed += await send(queue.popleft(), client) != 200
        return failed

    # Warm the connections (not measured).
    await asyncio.gather(*(send(-1 - i) for i in range(WARMUP)))
    started = time.perf_counter()
    cpu = time.process_time()
    for low in range(0, n, BATCH):
        if model == "lanes":
            queue = deque(range(low, min(n, low + BATCH)))
            failures += sum(await asyncio.gather(*(lane(c, queue) for c in clients)))
        elif model == "shared":
            queue = deque(range(low, min(n, low + BATCH)))
            failures += sum(await asyncio.gather(*(lane(clients[0], queue) for _ in range(lanes))))
        else:
            codes = await asyncio.gather(*(send(i) for i in range(low, min(n, low + BATCH))))
            failures += sum(code != 200 for code in codes)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await asyncio.gather(*(c.aclose() for c in clients))
    return {
        "model": model,
        "deliveries": n,
        "seconds": seconds,
        "per_second": n / seconds,
        "cpu_seconds": cpu,
        "failures": failures,
    }


# -- one dispatcher process (its own process) -----------------------------------------------


async def drain_all() -> dict[str, Any]:
    from app.db import database
    from app.webhooks import dispatcher

    started, cpu = time.time(), time.process_time()
    sent = 0
    while True:
        batch = await dispatcher.drain(budget_seconds=3600.0)
        sent += batch
        if not batch:
            break
    ended, cpu = time.time(), time.process_time() - cpu
    await dispatcher.clients.close()
    await database.dispose()
    return {"sent": sent, "started": started, "ended": ended, "cpu_seconds": cpu}


def drain_child() -> None:
    import app.models  # noqa: F401 - every table mapped, as in a worker
    from app.webhooks import dispatcher

    print(json.dumps({"ready": os.getpid(), "dispatcher": dispatcher.__file__}), flush=True)
    sys.stdin.readline()
    if os.environ.get("BENCH_UVLOOP") == "1":  # what uvloop in workers/runtime.py would give
        import uvloop

        print(json.dumps(uvloop.run(drain_all())), flush=True)
    else:
        print(json.dumps(asyncio.run(drain_all())), flush=True)


# -- orchestration helpers ------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_for_load(max_load: float, timeout: float = 1800.0) -> float:
    waited = time.monotonic()
    while (load := os.getloadavg()[0]) >= max_load:
        if time.monotonic() - waited > timeout:
            log(f"load {load:.2f} still >= {max_load} after {timeout:.0f} s; going on anyway")
            return load
        log(f"load {load:.2f} >= {max_load}; waiting")
        time.sleep(15)
    return load


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def http_json(url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    with urllib.request.urlopen(url, data=data, timeout=10) as response:
        return dict(json.loads(response.read()))


class Receiver:
    def __init__(self, port: int, out: Path) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/hooks"
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "webhook_receiver.py"), "--port", str(port)],
            stdout=open(out / "receiver.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(100):
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the receiver did not start")

    def stats(self) -> dict[str, Any]:
        return http_json(f"{self.base}/stats")

    def reset(self, secret: str | None) -> None:
        http_json(f"{self.base}/reset", {"secret": secret} if secret else {})

    def cpu(self) -> float:
        return process_cpu(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def pg(database: str = DATABASE) -> Any:
    import asyncpg

    return await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database=database)


# -- steps ----------------------------------------------------------------------------------


def wrk_capacity(receiver: Receiver, secret: str, out: Path) -> dict[str, Any]:
    """The receiver alone under wrk: signed 1 KB POSTs (one id, so all but one duplicates)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    body = body_for(EVENT_TYPE, datetime.now(UTC), event_data(1, padding()), 1)
    timestamp = int(time.time())
    script = out / "receiver_post.lua"
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "evt_wrk",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, "evt_wrk", timestamp, body),
    }
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    )
    receiver.reset(secret)
    cpu = receiver.cpu()
    done = subprocess.run(
        ["wrk", "-t1", "-c48", "-d10s", "-s", str(script), receiver.url],
        capture_output=True,
        text=True,
        check=True,
    )
    (out / "wrk_receiver.txt").write_text(done.stdout)
    stats = receiver.stats()
    rps = float(done.stdout.split("Requests/sec:")[1].split()[0])
    return {
        "requests_per_second": rps,
        "bad_signatures": stats["bad_signatures"],
        "requests": stats["requests"],
        "receiver_cpu_seconds": receiver.cpu() - cpu,
    }


def run_bare(
    receiver: Receiver, secret: str, n: int, out: Path, model: str = "pool"
) -> dict[str, Any]:
    receiver.reset(secret)
    done = subprocess.run(
        [sys.executable, __file__, "_bare", "--url", receiver.url, "--secret", secret,
         "--n", str(n), "--model", model],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    stats = receiver.stats()
    warmup = WARMUP
    result["receiver"] = stats
    result["correct"] = (
        stats["requests"] == n + warmup
        and stats["distinct_ids"] == n + warmup
        and stats["bad_signatures"] == 0
        and result["failures"] == 0
    )
    with open(out / "bare.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def migrate() -> None:
    async def recreate() -> None:
        conn = await pg("postgres")
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await conn.close()

    asyncio.run(recreate())
    subprocess.run([str(BIN / "loanwatch"), "migrate"], check=True, cwd=ROOT, env=loanwatch_env())


async def load_backlog(receiver_url: str, events: int, batch: int) -> dict[str, Any]:
    """One endpoint (through the service), then the events and their pending deliveries
    through ``emit_many`` in batches, one transaction each."""
    import app.models  # noqa: F401
    from app.api.auth import Principal
    from app.api_keys.models import Role
    from app.db import database, session_scope
    from app.events import service as events_service
    from app.webhooks import service as webhooks

    async with session_scope() as session:
        view = await webhooks.create_endpoint(
            session,
            Principal(api_key_id="bench", role=Role.ADMIN),
            url=receiver_url,
            event_types=["*"],
            description="webhook bench receiver",
            enabled=True,
        )
        secret, endpoint_id = view.endpoint.secret, view.endpoint.id

    fan_out_seconds = 0.0
    original = webhooks.fan_out

    async def timed_fan_out(*args: Any, **kwargs: Any) -> None:
        nonlocal fan_out_seconds
        started = time.perf_counter()
        await original(*args, **kwargs)
        fan_out_seconds += time.perf_counter() - started

    pad = padding()
    webhooks.fan_out = timed_fan_out  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        for low in range(0, events, batch):
            rows = [
                {"type": EVENT_TYPE, "loan_id": f"ln_{i:026d}", "data": event_data(i, pad)}
                for i in range(low, min(events, low + batch))
            ]
            async with session_scope() as session:
                await events_service.emit_many(session, rows)
        seconds = time.perf_counter() - started
    finally:
        webhooks.fan_out = original  # type: ignore[assignment]
    await database.dispose()
    return {
        "endpoint_id": endpoint_id,
        "secret": secret,
        "events": events,
        "batch": batch,
        "seconds": seconds,
        "events_per_second": events / seconds,
        "fan_out_seconds": fan_out_seconds,
        "event_insert_seconds": seconds - fan_out_seconds,
    }


async def backlog_facts() -> dict[str, Any]:
    conn = await pg()
    try:
        await conn.execute("VACUUM ANALYZE")
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM event) AS events, "
            "(SELECT count(*) FROM webhook_delivery WHERE status = 'pending') AS pending, "
            "(SELECT avg(octet_length(data::text))::int FROM event) AS data_bytes, "
            "(SELECT secret FROM webhook_endpoint LIMIT 1) AS secret, "
            "(SELECT url FROM webhook_endpoint LIMIT 1) AS url"
        )
        return dict(row)
    finally:
        await conn.close()


async def reset_deliveries() -> int:
    conn = await pg()
    try:
        await conn.execute("TRUNCATE webhook_attempt")
        count = await conn.fetchval(
            "WITH r AS (UPDATE webhook_delivery SET status = 'pending', attempts = 0, "
            "next_attempt_at = now() - interval '1 second', last_attempt_at = NULL, "
            "delivered_at = NULL RETURNING 1) SELECT count(*) FROM r"
        )
        await conn.execute("UPDATE webhook_endpoint SET failing_since = NULL, enabled = true")
        await conn.execute("VACUUM FULL ANALYZE webhook_delivery")
        await conn.execute("VACUUM FULL ANALYZE webhook_attempt")
        await conn.execute("VACUUM ANALYZE webhook_endpoint")
        return int(count)
    finally:
        await conn.close()


async def pending_count() -> int:
    conn = await pg()
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM webhook_delivery WHERE status = 'pending'")
        )
    finally:
        await conn.close()


async def verify(expected: int) -> dict[str, Any]:
    conn = await pg()
    try:
        statuses = {
            r["status"]: r["n"]
            for r in await conn.fetch(
                "SELECT status, count(*) AS n FROM webhook_delivery GROUP BY status"
            )
        }
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM webhook_attempt) AS attempt_rows, "
            "(SELECT count(DISTINCT delivery_id) FROM webhook_attempt) AS attempted_deliveries, "
            "(SELECT count(*) FROM webhook_attempt WHERE status_code IS DISTINCT FROM 200) "
            "  AS non_200, "
            "(SELECT sum(attempts) FROM webhook_delivery) AS attempts_sum, "
            "(SELECT extract(epoch FROM min(attempted_at)) FROM webhook_attempt) AS first_at, "
            "(SELECT extract(epoch FROM max(delivered_at)) FROM webhook_delivery) AS last_at"
        )
        facts = {"statuses": statuses, **{k: row[k] for k in row.keys()}}
        facts["first_at"] = float(facts["first_at"] or 0)
        facts["last_at"] = float(facts["last_at"] or 0)
        facts["attempts_sum"] = int(facts["attempts_sum"] or 0)
        facts["db_ok"] = (
            statuses == {"delivered": expected}
            and row["attempt_rows"] == expected
            and row["attempted_deliveries"] == expected
            and row["non_200"] == 0
            and facts["attempts_sum"] == expected
        )
        return facts
    finally:
        await conn.close()


def start_drainers(count: int, out: Path, app_path: str | None, tag: str) -> list[Any]:
    processes = []
    for i in range(count):
        p = subprocess.Popen(
            [sys.executable, __file__, "_drain"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(out / f"{tag}_{i}.err", "w"),
            text=True,
            cwd=ROOT,
            env=loanwatch_env(app_path),
        )
        assert p.stdout is not None
        ready = json.loads(p.stdout.readline())
        log(f"  drainer {p.pid} ready ({ready['dispatcher']})")
        processes.append(p)
    return processes


def run_direct(count: int, out: Path, app_path: str | None) -> dict[str, Any]:
    processes = start_drainers(count, out, app_path, f"direct{count}")
    cpu_before = children_cpu()
    released = time.time()
    for p in processes:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in processes:
        assert p.stdout is not None
        results.append(json.loads(p.stdout.readline()))
        p.wait(60)
    return {
        "released": released,
        "ended": max(r["ended"] for r in results),
        "processes": results,
        "worker_cpu_seconds": children_cpu() - cpu_before,
    }


def run_celery(count: int, out: Path, app_path: str | None) -> dict[str, Any]:
    from workers.celery_app import celery

    subprocess.run(["redis-cli", "-n", "11", "FLUSHDB"], check=True, capture_output=True)
    logfile = out / f"celery{count}.log"
    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "workers.celery_app:celery", "worker",
         f"--concurrency={count}", "--loglevel=info", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-n", f"hookbench{count}@%h"],
        stdout=open(logfile, "w"), stderr=subprocess.STDOUT,
        cwd=ROOT, env=loanwatch_env(app_path), start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while " ready." not in logfile.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"celery worker did not start; see {logfile}")
        time.sleep(0.2)
    cpu_before = children_cpu()
    released = time.time()
    for _ in range(count):
        celery.send_task("webhooks.dispatch")
    sent, next_sweep = count, time.monotonic() + 2
    while asyncio.run(pending_count()):
        if time.monotonic() >= next_sweep:
            celery.send_task("webhooks.dispatch", expires=2)
            sent, next_sweep = sent + 1, next_sweep + 2
        time.sleep(0.25)
    ended = time.time()
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    return {
        "released": released,
        "ended_polled": ended,
        "tasks_sent": sent,
        "worker_cpu_seconds": children_cpu() - cpu_before,
    }


def run_mode(
    mode: str, receiver: Receiver, secret: str, expected: int, args: argparse.Namespace
) -> dict[str, Any]:
    out = Path(args.out)
    count = int(mode[-1])
    reset = asyncio.run(reset_deliveries())
    assert reset == expected, (reset, expected)
    receiver.reset(secret)
    load = wait_for_load(args.max_load, args.max_wait)
    log(f"{mode}: load {load:.2f}, {expected} pending")
    busy0, total0 = machine_cpu()
    receiver_cpu = receiver.cpu()
    if mode.startswith("direct"):
        result = run_direct(count, out, args.app_path)
    else:
        result = run_celery(count, out, args.app_path)
    busy1, total1 = machine_cpu()
    facts = asyncio.run(verify(expected))
    stats = receiver.stats()
    seconds = facts["last_at"] - result["released"]
    result.update(
        mode=mode,
        load_before=load,
        load_after=os.getloadavg()[0],
        worker_cpu_ms_per_delivery=result["worker_cpu_seconds"] * 1000 / expected,
        deliveries=expected,
        seconds=seconds,
        per_second=expected / seconds,
        first_attempt_after=facts["first_at"] - result["released"],
        machine_cpu_busy=(busy1 - busy0) / (total1 - total0),
        receiver_cpu_seconds=receiver.cpu() - receiver_cpu,
        db=facts,
        receiver=stats,
        correct=facts["db_ok"]
        and stats["requests"] == expected
        and stats["distinct_ids"] == expected
        and stats["duplicates"] == 0
        and stats["bad_signatures"] == 0
        and stats["unsigned"] == 0,
    )
    log(
        f"{mode}: {expected} in {seconds:.1f} s = {expected / seconds:.0f}/s, "
        f"worker CPU {result['worker_cpu_seconds']:.1f} s, correct={result['correct']}"
    )
    return result


def profile(receiver: Receiver, secret: str, expected: int, args: argparse.Namespace) -> Any:
    out = Path(args.out)
    asyncio.run(reset_deliveries())
    receiver.reset(secret)
    wait_for_load(args.max_load, args.max_wait)
    [p] = start_drainers(1, out, args.app_path, "profile")
    assert p.stdin is not None
    assert p.stdout is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    time.sleep(2.0)  # past the first batch: the steady state
    raw = out / "pyspy.txt"
    spy = subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--pid", str(p.pid), "--duration", str(args.profile),
         "--rate", "200", "--format", "raw", "--idle", "--nonblocking", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=open(out / "pyspy.err", "w"),
    )  # fmt: skip
    spy.wait()
    result = json.loads(p.stdout.readline())
    p.wait(60)
    log(f"profile drain: {result['sent']} sent")
    return summarise_profile(raw)


def frame_name(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:123)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name


def summarise_profile(raw: Path, top: int = 40) -> dict[str, Any]:
    """Inclusive and self share of each function over all samples (``--idle``: the event loop
    waiting in ``select`` counts as idle)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        if frames[-1].startswith(("select (", "poll (", "epoll")):
            idle += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return {
        "samples": total,
        "idle_share": idle / total if total else 0,
        "inclusive": [(f, c / total) for f, c in inclusive.most_common(top)],
        "self": [(f, c / total) for f, c in own.most_common(top)],
    }


def report(results: dict[str, Any]) -> str:
    lines = ["# Webhook delivery benchmark", ""]
    wrk = results.get("wrk")
    if wrk:
        lines.append(f"Receiver alone (wrk -t1 -c48, signed 1 KB POSTs): "
                     f"{wrk['requests_per_second']:,.0f} req/s.")  # fmt: skip
    bare = results.get("bare", [])
    if bare:
        for model in sorted({b.get("model", "pool") for b in bare}):
            runs = [b for b in bare if b.get("model", "pool") == model]
            rates = [b["per_second"] for b in runs]
            cpu = [b["cpu_seconds"] * 1000 / b["deliveries"] for b in runs]
            lines.append(f"Bare httpx + HMAC loop ({model}): "
                         f"{', '.join(f'{r:,.0f}' for r in rates)}/s (median "
                         f"{statistics.median(rates):,.0f}; CPU ms/delivery "
                         f"{', '.join(f'{c:.2f}' for c in cpu)}).")  # fmt: skip
    load = results.get("load")
    if load:
        lines.append(f"Backlog: {load['events']:,} events in {load['seconds']:.1f} s "
                     f"({load['events_per_second']:,.0f}/s; event INSERT "
                     f"{load['event_insert_seconds']:.1f} s, fan_out "
                     f"{load['fan_out_seconds']:.1f} s).")  # fmt: skip
    lines += ["", "| mode | drain s | deliveries/s | worker CPU ms/delivery | machine busy "
              "| load before/after | correct |",
              "| --- | ---: | ---: | ---: | ---: | --- | --- |"]  # fmt: skip
    for r in results.get("modes", []):
        lines.append(
            f"| {r['mode']} | {r['seconds']:.1f} | {r['per_second']:,.0f} | "
            f"{r['worker_cpu_seconds'] * 1000 / r['deliveries']:.2f} | "
            f"{r['machine_cpu_busy']:.0%} | {r['load_before']:.2f}/{r.get('load_after', 0):.2f} "
            f"| {r['correct']} |"
        )
    prof = results.get("profile")
    if prof:
        lines += ["", f"py-spy: {prof['samples']} samples, idle {prof['idle_share']:.0%}", ""]
        lines += [f"- {share:6.1%} {frame}" for frame, share in prof["inclusive"]]
        lines += ["", "self:"] + [f"- {share:6.1%} {frame}" for frame, share in prof["self"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--bare-n", type=int, default=30_000)
    parser.add_argument("--bare-reps", type=int, default=2)
    parser.add_argument(
        "--bare-models",
        default="pool,shared",
        help="pool (plain httpx), shared (the dispatcher's client), lanes; comma-separated",
    )
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument(
        "--max-wait", type=float, default=1800.0, help="seconds to wait for --max-load per step"
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds (0: none)")
    parser.add_argument(
        "--app-path", help="a folder with a copy of app/ to put first on PYTHONPATH"
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="the direct dispatcher processes run on uvloop"
    )
    parser.add_argument("--reuse", action="store_true", help="keep an existing backlog")
    parser.add_argument("--skip-wrk", action="store_true")
    parser.add_argument("--out", default="/tmp/webhook_bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(loanwatch_env())
    if args.uvloop:
        os.environ["BENCH_UVLOOP"] = "1"
    results: dict[str, Any] = {"args": vars(args), "started": time.time()}
    receiver = Receiver(args.port, out)
    try:
        facts: dict[str, Any] | None = None
        if args.reuse:
            try:
                facts = asyncio.run(backlog_facts())
            except Exception as exc:
                log(f"no backlog to reuse ({exc})")
        if (
            not facts
            or facts["events"] != args.events
            or not facts["url"].startswith(receiver.base)
        ):
            migrate()
            wait_for_load(args.max_load, args.max_wait)
            log(f"loading {args.events} events")
            results["load"] = asyncio.run(load_backlog(receiver.url, args.events, args.batch))
            log(f"loaded in {results['load']['seconds']:.1f} s")
            facts = asyncio.run(backlog_facts())
        results["backlog"] = {k: v for k, v in facts.items() if k != "secret"}
        secret = str(facts["secret"])
        if not args.skip_wrk:
            wait_for_load(args.max_load, args.max_wait)
            results["wrk"] = wrk_capacity(receiver, secret, out)
            log(f"receiver alone: {results['wrk']['requests_per_second']:,.0f} req/s")
        results["bare"] = []

        def bare() -> None:
            for _ in range(args.bare_reps):
                for model in args.bare_models.split(","):
                    wait_for_load(args.max_load, args.max_wait)
                    b = run_bare(receiver, secret, args.bare_n, out, model)
                    log(f"bare loop ({model}): {b['per_second']:,.0f}/s (correct={b['correct']})")
                    results["bare"].append(b)

        bare()
        results["modes"] = []
        for mode in args.modes.split(","):
            if mode:
                results["modes"].append(run_mode(mode, receiver, secret, facts["events"], args))
                (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        bare()
        if args.profile:
            results["profile"] = profile(receiver, secret, facts["events"], args)
    finally:
        receiver.stop()
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (out / "report.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_drain"]:
        drain_child()
    elif sys.argv[1:2] == ["_bare"]:
        bare_parser = argparse.ArgumentParser()
        bare_parser.add_argument("--url", required=True)
        bare_parser.add_argument("--secret", required=True)
        bare_parser.add_argument("--n", type=int, required=True)
        bare_parser.add_argument("--model", choices=("pool", "shared", "lanes"), default="pool")
        a = bare_parser.parse_args(sys.argv[2:])
        print(json.dumps(asyncio.run(bare_loop(a.url, a.secret, a.n, a.model))))
    else:
        main()
