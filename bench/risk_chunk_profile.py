"""Where one chunk of the risk step's first night goes: each statement's time and the Python
between them, for the two middle chunks of the ready book, each in a rolled-back transaction
(the book is left as it was, so it can be run again and again).

    .venv/bin/python bench/risk_bench.py --loans 1000000      # once: the ready book
    .venv/bin/python bench/risk_chunk_profile.py
"""

import argparse
import asyncio
import os
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))

import close_bench
import risk_bench


async def profile(as_of: date, slowest: float) -> None:
    from sqlalchemy import event

    import app.models  # noqa: F401 - every table mapped
    from app.close import service as close_service
    from app.db import database
    from app.delinquency import service as delinquency
    from app.risk import service as risk
    from workers import runtime

    runtime.settle_garbage_collector()  # as a Celery worker process does after its fork

    timings: list[tuple[float, str]] = []

    def before(conn: Any, *_: Any) -> None:
        conn.info["started"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        timings.append((time.perf_counter() - conn.info["started"], " ".join(statement.split())))

    event.listen(database.engine.sync_engine, "before_cursor_execute", before)
    event.listen(database.engine.sync_engine, "after_cursor_execute", after)
    bounds = await close_service.chunks()
    for n in (len(bounds) // 2, len(bounds) // 2 + 1):
        low, high = bounds[n]
        async with database.sessions() as session:
            await delinquency.lock_chunk(session, low, high)
            timings.clear()
            started, cpu_started = time.perf_counter(), time.process_time()
            counts = await risk.evaluate_overnight(session, as_of, low, high)
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            await session.rollback()
        in_sql = sum(t for t, _ in timings)
        print(f"chunk {n} of {len(bounds)}: {seconds:.2f} s, {counts}; {len(timings)} statements "
              f"{in_sql:.2f} s, Python {seconds - in_sql:.2f} s, "
              f"this process's CPU {cpu:.2f} s")  # fmt: skip
        for spent, statement in timings:
            if spent >= slowest:
                print(f"  {spent:6.3f} s  {statement[:100]}")
    await database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=1_000_000)
    parser.add_argument("--as-of", type=date.fromisoformat, help="D [yesterday]")
    parser.add_argument("--slowest", type=float, default=0.01, help="list statements this slow")
    args = parser.parse_args()
    zone = ZoneInfo(os.environ.get("LOANWATCH_TIMEZONE", "Asia/Shanghai"))
    as_of = args.as_of or datetime.now(zone).date() - timedelta(days=1)
    os.environ.update(close_bench.env_for(risk_bench.ready_database(args.loans)))
    asyncio.run(profile(as_of, args.slowest))


if __name__ == "__main__":
    main()
