"""The nightly close on PostgreSQL at 1M loans: in one process, and on Celery with 1 and 2
worker processes.

For each size (``--loans``, default 1,000,000 and 100,000):

1. builds ``loanwatch_closebench_base_<N>`` once: drop, create, ``loanwatch migrate``,
   ``loanwatch demo --loans N --as-of D`` (timed), then ``VACUUM (FREEZE, ANALYZE)`` (timed; the
   book a nightly close meets has statistics and settled visibility) — reused on later runs
   unless ``--rebuild``;
2. for each mode (``inline``, ``celery1``, ``celery2``): clones it into ``loanwatch_closebench``
   (``CREATE DATABASE ... TEMPLATE``), waits until the 1-minute load average is below
   ``--max-load``, then closes D (the first close over the freshly loaded book: every overdue
   installment gets its late fee, every late loan changes bucket) and D+1 (a following night:
   only what changed that day). ``inline`` is ``loanwatch close --as-of``; ``celeryN`` starts
   ``celery -A workers.celery_app:celery worker --concurrency=N`` on Redis db 12, marks the
   dates pending with ``app.close.service.plan_close`` and sends ``close.run_dates``, then polls
   the ``close_run`` row;
3. records the wall time, the run's per-step seconds (``close_run.steps``), loans/s and the peak
   RSS (VmHWM) of the close's processes: the CLI process, or the worker parent and its children.

D is yesterday (so that D+1 may be closed). ``--explain`` instead profiles one chunk of each step
of the first close: every statement's time, and ``EXPLAIN (ANALYZE, BUFFERS)`` of each.

    .venv/bin/python bench/close_bench.py                  # everything (~1 h, mostly loading)
    .venv/bin/python bench/close_bench.py --loans 100000 --modes inline
    .venv/bin/python bench/close_bench.py --loans 1000000 --explain

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on 127.0.0.1:6379.
Results go to ``--out`` (results.json, report.md, logs).
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-Atq"]
SCRATCH = "loanwatch_closebench"
EXPLAIN_DB = f"{SCRATCH}_explain"
REDIS_URL = "redis://127.0.0.1:6379/12"
MODES = ("inline", "celery1", "celery2")


def url(database: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1/{database}"


def psql(sql: str, database: str = "postgres") -> str:
    done = subprocess.run([*PG, "-d", database, "-c", sql], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"psql failed: {sql}\n{done.stderr}")
    return done.stdout.strip()


def env_for(database: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOANWATCH_")}
    env.update(LOANWATCH_DATABASE_URL=url(database), LOANWATCH_REDIS_URL=REDIS_URL,
               LOANWATCH_LOG_LEVEL="warning")  # fmt: skip
    return env


def wait_for_quiet(max_load: float, max_wait: float) -> float:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``max_wait`` s)."""
    deadline = time.monotonic() + max_wait
    while (load := os.getloadavg()[0]) >= max_load and time.monotonic() < deadline:
        print(f"  load {load:.2f} >= {max_load}: waiting", flush=True)
        time.sleep(20)
    return round(os.getloadavg()[0], 2)


def exists(database: str) -> bool:
    return psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == "1"


def build_base(loans: int, as_of: date, seed: int, out: Path, rebuild: bool) -> dict[str, Any]:
    base = f"{SCRATCH}_base_{loans}"
    # What the base holds is kept on the database itself (its comment), whatever --out is.
    if exists(base) and not rebuild:
        comment = psql(
            f"SELECT shobj_description(oid, 'pg_database') FROM pg_database "
            f"WHERE datname = '{base}'"
        )
        meta = json.loads(comment) if comment.startswith("{") else {}
        if meta.get("as_of") == as_of.isoformat() and meta.get("seed") == seed:
            print(f"reusing {base} (generated {meta['generated_at']})", flush=True)
            (out / f"base_{loans}.json").write_text(json.dumps(meta, indent=2))
            return dict(meta)
    print(f"building {base}: {loans:,} loans as of {as_of}", flush=True)
    psql(f'DROP DATABASE IF EXISTS "{base}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{base}"')
    env = env_for(base)
    subprocess.run([BIN / "loanwatch", "migrate"], env=env, check=True, capture_output=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    demo = subprocess.Popen(
        [BIN / "loanwatch", "demo", "--loans", str(loans), "--as-of", as_of.isoformat(),
         "--seed", str(seed)], env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, status, usage = os.wait4(demo.pid, 0)
    generate_seconds = time.perf_counter() - started
    summary = demo.stdout.read() if demo.stdout else ""
    if status:
        raise RuntimeError(f"loanwatch demo failed: {summary}")
    print(summary, flush=True)
    started = time.perf_counter()
    psql("VACUUM (FREEZE, ANALYZE)", base)
    vacuum_seconds = time.perf_counter() - started
    meta = {
        "loans": loans, "as_of": as_of.isoformat(), "seed": seed,
        "generated_at": datetime.now().isoformat(timespec="seconds"),
        "generate_seconds": round(generate_seconds, 1),
        "generate_peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
        "vacuum_seconds": round(vacuum_seconds, 1),
        "summary": summary.strip(),
        "database_size": psql(f"SELECT pg_size_pretty(pg_database_size('{base}'))"),
        "rows": {t: int(psql(f"SELECT count(*) FROM {t}", base)) for t in (
            "loan", "loan_installment", "payment", "payment_allocation", "ledger_transaction")},
    }  # fmt: skip
    (out / f"base_{loans}.json").write_text(json.dumps(meta, indent=2))
    quoted = json.dumps(meta).replace("'", "''")
    psql(f"COMMENT ON DATABASE \"{base}\" IS '{quoted}'")
    return meta


def clone(base: str, target: str = SCRATCH) -> float:
    started = time.perf_counter()
    psql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    # FILE_COPY: a checkpoint and a file copy, much faster than WAL-logging gigabytes.
    psql(f'CREATE DATABASE "{target}" TEMPLATE "{base}" STRATEGY FILE_COPY')
    # A base built before the latest migrations gets them here (a no-op otherwise).
    subprocess.run([BIN / "loanwatch", "migrate"], env=env_for(target), check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def read_run(as_of: date) -> dict[str, Any] | None:
    row = psql(
        "SELECT row_to_json(r) FROM (SELECT status, started_at, finished_at, steps, counts, "
        f"error FROM close_run WHERE as_of = '{as_of}') r",
        SCRATCH,
    )
    return json.loads(row) if row else None


def summarise(as_of: date, wall: float, loans: int, rss_mb: dict[str, int],
              load: float) -> dict[str, Any]:  # fmt: skip
    run = read_run(as_of)
    assert run is not None
    if run["status"] != "succeeded":
        raise RuntimeError(f"close {as_of} did not succeed: {run}")
    started = datetime.fromisoformat(run["started_at"])
    finished = datetime.fromisoformat(run["finished_at"])
    close_seconds = (finished - started).total_seconds()
    return {
        "as_of": as_of.isoformat(),
        "wall_seconds": round(wall, 2),
        "close_seconds": round(close_seconds, 2),
        "loans_per_second": round(loans / close_seconds),
        "steps": {name: step.get("seconds") for name, step in run["steps"].items()},
        "chunks": {name: step.get("chunks") for name, step in run["steps"].items()},
        "counts": run["counts"],
        "peak_rss_mb": rss_mb,
        "load_before": load,
    }


def run_inline(dates: list[date], loans: int, max_load: float, max_wait: float,
               log: Path) -> list[dict[str, Any]]:  # fmt: skip
    results = []
    for as_of in dates:
        load = wait_for_quiet(max_load, max_wait)
        started = time.perf_counter()
        with log.open("a") as out:
            process = subprocess.Popen(
                [BIN / "loanwatch", "close", "--as-of", as_of.isoformat()],
                env=env_for(SCRATCH), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if status:
            raise RuntimeError(f"loanwatch close failed, see {log}")
        results.append(summarise(as_of, wall, loans, {"cli": round(usage.ru_maxrss / 1024)},
                                 load))  # fmt: skip
        print(f"  inline {as_of}: {results[-1]}", flush=True)
    return results


def run_celery(concurrency: int, dates: list[date], loans: int, max_load: float,
               max_wait: float, log: Path) -> list[dict[str, Any]]:  # fmt: skip
    env = env_for(SCRATCH)
    subprocess.run(["redis-cli", "-n", REDIS_URL.rsplit("/", 1)[1], "flushdb"], check=True,
                   capture_output=True)  # fmt: skip
    os.environ.update(env)
    from app.close import service as close_service
    from app.config import get_settings
    from app.db import database, session_scope

    get_settings.cache_clear()
    from workers.celery_app import celery

    celery.conf.broker_url = celery.conf.result_backend = REDIS_URL
    with log.open("a") as out:
        worker = subprocess.Popen(
            [BIN / "celery", "-A", "workers.celery_app:celery", "worker",
             f"--concurrency={concurrency}", "--loglevel=warning", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    results = []
    try:
        for _ in range(120):
            if celery.control.ping(timeout=0.5):
                break
        else:
            raise RuntimeError(f"the worker did not answer, see {log}")
        pids = [worker.pid, *children(worker.pid)]
        assert len(pids) == concurrency + 1, pids

        async def plan(as_of: date) -> list[date]:
            try:
                async with session_scope() as session:
                    return await close_service.plan_close(session, as_of=as_of)
            finally:
                await database.dispose()

        for as_of in dates:
            load = wait_for_quiet(max_load, max_wait)
            started = time.perf_counter()
            planned = asyncio.run(plan(as_of))
            celery.send_task("close.run_dates", args=[[d.isoformat() for d in planned]])
            while True:
                time.sleep(0.2)
                run = read_run(as_of)
                if run and run["status"] in ("succeeded", "failed"):
                    break
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited, see {log}")
            wall = time.perf_counter() - started
            rss = {"parent": round(vm_hwm_kb(worker.pid) / 1024)}
            for n, pid in enumerate(children(worker.pid), start=1):
                rss[f"child{n}"] = round(vm_hwm_kb(pid) / 1024)
            results.append(summarise(as_of, wall, loans, rss, load))
            print(f"  celery{concurrency} {as_of}: {results[-1]}", flush=True)
    finally:
        worker.terminate()
        worker.wait(60)
    return results


def explain(loans: int, base: str, as_of: date, out: Path) -> str:
    """Time every statement of one chunk (the middle one) of each step of the first close, then
    EXPLAIN (ANALYZE, BUFFERS) them in order on a fresh clone, inside a rolled-back
    transaction."""
    clone(base, EXPLAIN_DB)
    os.environ.update(env_for(EXPLAIN_DB))
    from sqlalchemy import event

    import app.models  # noqa: F401 - every table mapped
    from app.close import service as close_service
    from app.config import get_settings
    from app.db import database

    get_settings.cache_clear()
    captured: list[dict[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:  # fmt: skip
        conn.info["started"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
              executemany: bool) -> None:  # fmt: skip
        seconds = time.perf_counter() - conn.info["started"]
        captured.append({"sql": statement, "parameters": parameters, "many": executemany,
                         "rows": len(parameters) if executemany else None,
                         "seconds": seconds})  # fmt: skip

    async def one_chunk_per_step() -> list[tuple[str, int, int]]:
        bounds = await close_service.chunks()
        low, high = bounds[len(bounds) // 2]
        marks = []
        for step in close_service.STEPS:
            start = len(captured)
            await close_service.run_chunk(step, as_of, low, high)
            marks.append((step, start, len(captured)))
        await database.dispose()
        return marks

    event.listen(database.engine.sync_engine, "before_cursor_execute", before)
    event.listen(database.engine.sync_engine, "after_cursor_execute", after)
    marks = asyncio.run(one_chunk_per_step())

    clone(base, EXPLAIN_DB)
    import asyncpg

    async def analyse() -> list[str]:
        report = []
        # As the service connects (app.db.make_engine): without JIT, whose compilation the
        # plans' times would otherwise include.
        connection = await asyncpg.connect(
            "postgresql://postgres@127.0.0.1/" + EXPLAIN_DB, server_settings={"jit": "off"}
        )
        try:
            async with connection.transaction():
                for step, start, stop in marks:
                    report.append(f"## {step}\n")
                    for statement in captured[start:stop]:
                        sql = statement["sql"]
                        if "close_run" in sql or sql.lstrip().upper().startswith(("BEGIN", ";")):
                            continue
                        head = (f"-- {statement['seconds'] * 1000:.0f} ms"
                                + (f", executemany of {statement['rows']} rows"
                                   if statement["many"] else ""))  # fmt: skip
                        report.append(f"```\n{head}\n{shorten(sql)}\n")
                        if sql.lstrip().upper().startswith("SET "):  # the risk step's planner
                            await connection.execute(sql)  # settings, for the plans after them
                            report.append("```\n")
                            continue
                        if statement["many"] or sql.lstrip().upper().startswith("INSERT"):
                            report.append("```\n")
                            continue
                        rows = await connection.fetch(
                            "EXPLAIN (ANALYZE, BUFFERS) " + sql, *(statement["parameters"] or ())
                        )
                        plan = (r[0] if len(r[0]) < 300 else r[0][:300] + " ..." for r in rows)
                        report.append("\n".join(plan) + "\n```\n")
                raise _Rollback
        except _Rollback:
            pass
        finally:
            await connection.close()
        return report

    text = f"# One chunk of each step, {loans:,} loans, as of {as_of}\n\n" + "\n".join(
        asyncio.run(analyse())
    )
    (out / f"explain_{loans}.md").write_text(text)
    psql(f'DROP DATABASE IF EXISTS "{EXPLAIN_DB}" WITH (FORCE)')
    return text


def shorten(sql: str) -> str:
    """Long lists of bound parameters (IN lists, multi-row VALUES) cut to their first items."""
    sql = re.sub(r"((?:\$\d+(?:::[A-Z ]+)?, ){3})(?:\$\d+(?:::[A-Z ]+)?, )+", r"\1..., ", sql)
    return re.sub(r"(\([^()]*\), \([^()]*\), )(?:\([^()]*\), )+", r"\1..., ", sql)


class _Rollback(Exception):
    pass


def commit() -> str:
    """The commit benchmarked (a snapshot made with git archive carries it in COMMIT)."""
    if (ROOT / "COMMIT").exists():
        return (ROOT / "COMMIT").read_text().strip()
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip()


def markdown(results: dict[str, Any]) -> str:
    code = results["code"]
    lines = [f"Code: {code['commit']}; database settings: {code['settings'] or 'defaults'}\n"]
    for size, data in results.items():
        if size == "code":
            continue
        base = data["base"]
        lines.append(f"### {int(size):,} loans\n")
        lines.append(
            f"Generation (`loanwatch demo`): {base['generate_seconds']} s "
            f"(peak RSS {base['generate_peak_rss_mb']} MB, load {base['load_before']}), then "
            f"`VACUUM (FREEZE, ANALYZE)` {base['vacuum_seconds']} s; database "
            f"{base['database_size']}; rows {base['rows']}.\n"
        )
        lines.append("| mode | date | whole close (s) | late_fees | delinquency | reminders "
                     "| loans/s | peak RSS (MB) | load before |")  # fmt: skip
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
        for mode, runs in data["modes"].items():
            for run in runs:
                steps = run["steps"]
                rss = ", ".join(f"{k} {v}" for k, v in run["peak_rss_mb"].items())
                lines.append(
                    f"| {mode} | {run['as_of']} | {run['close_seconds']} "
                    f"| {steps.get('late_fees')} | {steps.get('delinquency')} "
                    f"| {steps.get('reminders')} | {run['loans_per_second']:,} | {rss} "
                    f"| {run['load_before']} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loans", type=int, nargs="+", default=[1_000_000, 100_000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", type=date.fromisoformat, help="D [yesterday]")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=1800, help="seconds, per timed run")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the base databases")
    parser.add_argument("--explain", action="store_true", help="profile one chunk per step")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the scratch database (ALTER DATABASE)",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/closebench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)

    # Yesterday in the service's zone, so that the next night (today) may be closed too.
    zone = ZoneInfo(os.environ.get("LOANWATCH_TIMEZONE", "Asia/Shanghai"))
    as_of = args.as_of or datetime.now(zone).date() - timedelta(days=1)
    dates = [as_of, as_of + timedelta(days=1)]
    results_file = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    results["code"] = {"root": str(ROOT), "commit": commit(), "settings": args.set}
    for loans in args.loans:
        base = build_base(loans, as_of, args.seed, args.out, args.rebuild)
        if args.explain:
            print(explain(loans, f"{SCRATCH}_base_{loans}", as_of, args.out))
            continue
        entry = results.setdefault(str(loans), {"modes": {}})
        entry["base"] = base
        for mode in args.modes:
            print(f"{loans:,} loans, {mode}", flush=True)
            clone_seconds = clone(f"{SCRATCH}_base_{loans}")
            for setting in args.set:
                name, value = setting.split("=", 1)
                psql(f'ALTER DATABASE "{SCRATCH}" SET {name} = {value}')
            print(f"  cloned in {clone_seconds:.1f} s", flush=True)
            log = args.out / f"{mode}_{loans}.log"
            if mode == "inline":
                runs = run_inline(dates, loans, args.max_load, args.max_wait, log)
            else:
                runs = run_celery(int(mode[-1]), dates, loans, args.max_load, args.max_wait, log)
            entry["modes"][mode] = runs
            results_file.write_text(json.dumps(results, indent=2))
    if not args.explain:
        report = markdown(results)
        (args.out / "report.md").write_text(report)
        print(report)
        psql(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')


if __name__ == "__main__":
    main()
