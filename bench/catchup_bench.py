"""A catch-up close of a small book, in process: milliseconds and statements per date.

What a site that missed some nights, the embedded default, and the flag and promise tests (which
replay dozens of dates each) pay per date when the book is tiny: the close's own bookkeeping and
each step's fixed cost, not the work per loan. On a scratch PostgreSQL database, through the
API (httpx on the ASGI app): a product, ``--loans`` loans disbursed on 2026-01-10 and closed
that day, then one ``POST /v1/close-runs`` that catches up ``--dates`` dates, ``--reps`` times on
fresh databases.

    .venv/bin/python bench/catchup_bench.py
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "loanwatch_catchupbench"
START = date(2026, 1, 10)


async def one_run(loans: int, dates: int) -> tuple[float, int]:
    import httpx
    from sqlalchemy import event

    from app.api_keys.models import Role
    from app.api_keys.service import issue_key
    from app.db import database, session_scope
    from app.main import create_app

    async with session_scope() as session:
        _, key = await issue_key(session, role=Role.ADMIN, merchant_id=None)
    admin = {"Authorization": f"Bearer {key}"}
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

        async def post(path: str, body: object) -> dict[str, object]:
            response = await client.post(path, json=body, headers=admin)
            assert response.status_code in (200, 201), response.text
            return dict(response.json())

        merchant = await post("/v1/merchants", {"name": "Bench"})
        await post("/v1/products", {"code": "B3", "name": "3 months", "grace_days": 3,
                                    "annual_interest_rate": "0.12", "term_options": [3],
                                    "amortization": "equal_principal"})  # fmt: skip
        await post("/v1/close-runs", {"as_of": START.isoformat()})
        for n in range(loans):
            borrower = await post("/v1/borrowers", {
                "merchant_id": merchant["id"], "external_id": f"c{n}", "name": "Li Wei",
                "phone": "+8613800138000", "monthly_income": "10000.00"})  # fmt: skip
            await post("/v1/loans", {"borrower_id": borrower["id"], "product_code": "B3",
                                     "principal": "1200.00", "term": 3,
                                     "merchant_order_ref": f"o{n}",
                                     "disbursed_on": START.isoformat()})  # fmt: skip
        statements = 0

        def count(*_: object) -> None:
            nonlocal statements
            statements += 1

        event.listen(database.engine.sync_engine, "after_cursor_execute", count)
        started = time.perf_counter()
        run = await post("/v1/close-runs", {"as_of": (START + timedelta(days=dates)).isoformat()})
        seconds = time.perf_counter() - started
        assert run["status"] == "succeeded", run
    await database.dispose()
    return seconds, statements


def child(loans: int, dates: int) -> None:
    seconds, statements = asyncio.run(one_run(loans, dates))
    print(f"{seconds} {statements}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=3)
    parser.add_argument("--dates", type=int, default=60)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.loans, args.dates)
        return
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
    env = {**os.environ, "LOANWATCH_DATABASE_URL": url, "LOANWATCH_IN_PROCESS_SCHEDULER": "true",
           "LOANWATCH_LOG_LEVEL": "warning"}  # fmt: skip
    per_date = []
    for _ in range(args.reps):
        for sql in (f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
                    f'CREATE DATABASE "{DATABASE}"'):  # fmt: skip
            subprocess.run(["psql", ADMIN_DSN, "-qc", sql], check=True)
        subprocess.run([str(BENCH.parent / ".venv/bin/loanwatch"), "migrate"], env=env,
                       check=True, capture_output=True)  # fmt: skip
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--loans", str(args.loans),
             "--dates", str(args.dates)],
            env=env, check=True, capture_output=True, text=True, cwd=BENCH.parent,
        )  # fmt: skip
        seconds, statements = done.stdout.split()[-2:]
        per_date.append(float(seconds) / args.dates * 1000)
        print(f"{args.dates} dates, {args.loans} loans: {float(seconds):.2f} s, "
              f"{per_date[-1]:.1f} ms a date, {int(statements) / args.dates:.0f} statements "
              f"a date", flush=True)  # fmt: skip
    print(f"median {statistics.median(per_date):.1f} ms a date")


if __name__ == "__main__":
    main()
