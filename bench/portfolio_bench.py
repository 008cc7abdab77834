"""Portfolio reads on a 1M-loan book: p50/p99 of each dashboard endpoint over HTTP.

Runs against a database the close benchmark left closed (``bench/close_bench.py`` leaves
``loanwatch_closebench`` closed as of D and D+1: snapshots, aggregates and segments in place).
Before measuring it appends a day's worth of writes to the live counts — ``--payments`` loans
each get a principal change and a collection in ``portfolio_delta``, shaped as the before-flush
listener writes them for a payment — so the summary pays for its deltas as it would at the end
of a busy day. Then it starts ``loanwatch serve`` (one uvicorn worker) on the database and, for
each endpoint, sends ``--requests`` sequential requests on one keep-alive connection (after 50
unmeasured), then as many with ``If-None-Match`` set to the ETag it got.

    .venv/bin/python bench/close_bench.py --loans 1000000 --modes inline   # once: the book
    .venv/bin/python bench/portfolio_bench.py

Prints a table (and writes ``--out``/portfolio.json). Targets (issue #6): summary p99 < 50 ms,
roll rates and vintages < 200 ms.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-Atq"]


def psql(sql: str, database: str) -> str:
    done = subprocess.run([*PG, "-d", database, "-c", sql], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"psql failed: {sql}\n{done.stderr}")
    return done.stdout.strip()


def add_day_of_writes(database: str, payments: int) -> None:
    psql("DELETE FROM portfolio_delta", database)
    psql(
        f"""
        WITH paid AS (
            SELECT id, merchant_id, product_code, currency, status, bucket FROM loan
            WHERE status IN ('active', 'delinquent') ORDER BY random() LIMIT {payments})
        INSERT INTO portfolio_delta (loan_id, merchant_id, product_code, currency, status,
                                     bucket, loans, principal_minor, flags, received_on,
                                     collected_minor)
        SELECT id, merchant_id, product_code, currency, status, bucket, 0, -8000, 0, NULL, 0
        FROM paid
        UNION ALL
        SELECT id, merchant_id, product_code, currency, NULL, NULL, 0, 0, 0, CURRENT_DATE, 9000
        FROM paid
        """,
        database,
    )
    psql("ANALYZE portfolio_delta", database)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(client: httpx.Client, path: str, requests: int) -> dict[str, Any]:
    for _ in range(50):
        warm = client.get(path)
        assert warm.status_code == 200, warm.text
    etag = warm.headers["etag"]
    result: dict[str, Any] = {"path": path, "bytes": len(warm.content)}
    for name, headers, status in (
        ("full", {}, 200),
        ("if_none_match", {"If-None-Match": etag}, 304),
    ):
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(path, headers=headers)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == status, response.text
        result[name] = {
            "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(percentile(samples, 0.99), 2),
            "max_ms": round(max(samples), 2),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="loanwatch_closebench")
    parser.add_argument("--payments", type=int, default=30000, help="a day's payments as deltas")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--port", type=int, default=8041)
    parser.add_argument("--out", type=Path, default=Path("/tmp/portfoliobench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    loans = int(psql("SELECT count(*) FROM loan", args.database))
    snapshots = psql(
        "SELECT string_agg(DISTINCT as_of::text, ',') FROM loan_snapshot", args.database
    )
    print(f"{loans:,} loans; snapshots {snapshots}", flush=True)
    add_day_of_writes(args.database, args.payments)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOANWATCH_")}
    env.update(
        LOANWATCH_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1/{args.database}",
        LOANWATCH_IN_PROCESS_SCHEDULER="false",
        LOANWATCH_LOG_LEVEL="warning",
    )
    key = subprocess.run(
        [BIN / "loanwatch", "api-keys", "create", "--role", "dashboard"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    server = subprocess.Popen(
        [BIN / "loanwatch", "serve", "--host", "127.0.0.1", "--port", str(args.port)],
        env=env, stdout=subprocess.DEVNULL, stderr=(args.out / "server.log").open("w"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        merchant = psql("SELECT min(merchant_id) FROM loan", args.database)
        paths = [
            "/v1/portfolio/summary",
            f"/v1/portfolio/summary?merchant_id={merchant}",
            "/v1/portfolio/roll-rates",
            "/v1/portfolio/vintages",
            "/v1/portfolio/segments?by=product",
            "/v1/portfolio/segments?by=vintage",
        ]
        load = os.getloadavg()[0]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                          timeout=30) as client:  # fmt: skip
            results = [measure(client, path, args.requests) for path in paths]
    finally:
        server.terminate()
        server.wait()
    report = {"loans": loans, "deltas": 2 * args.payments, "requests": args.requests,
              "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
              "results": results}  # fmt: skip
    (args.out / "portfolio.json").write_text(json.dumps(report, indent=2))
    print(f"\n{loans:,} loans, {2 * args.payments:,} delta rows, {args.requests} requests each, "
          f"load {report['load_before']} -> {report['load_after']}")  # fmt: skip
    print("| endpoint | p50 ms | p99 ms | max ms | 304: p50 ms | 304: p99 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        full, cached = r["full"], r["if_none_match"]
        print(f"| `{r['path']}` | {full['p50_ms']} | {full['p99_ms']} | {full['max_ms']} | "
              f"{cached['p50_ms']} | {cached['p99_ms']} |")  # fmt: skip


if __name__ == "__main__":
    main()
