"""How often the events feed's horizon holds back a transaction that has just committed.

The feed lists only transactions below its horizon (app/events/service.py ``_FEED_HORIZON``).
A transaction of another database that ends between the horizon statement's snapshot and its
read of the server's sessions cannot be placed, and is counted as this database's: it holds
the horizon below a transaction committed just before. This measures that, on a scratch
PostgreSQL database beside four connections of the maintenance database whose transactions
come and go, with ``--burners`` processes spinning to load the CPUs (a CI machine's other test
worker): for each of ``--reads`` rounds, a transaction commits, then the horizon is read (up
to ``--reads-per-horizon`` times, as the feed does while something is unplaced), and a round
is *short* when the committed transaction is not below the horizon. ``--variant before``
reads the horizon without the running transactions' status check (the statement until the
thirty-eighth session), ``current`` the service's statement.

    .venv/bin/python bench/feed_horizon.py --variant before --reads 3000 --reads-per-horizon 1
    .venv/bin/python bench/feed_horizon.py --variant current --reads 3000 --reads-per-horizon 1
"""

import argparse
import asyncio
import multiprocessing
import time

import asyncpg  # type: ignore[import-untyped]

from app.events.service import _FEED_HORIZON

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "loanwatch_horizonbench"
# The neighbours' transactions: held this long each, back to back.
HOLDS = (0.002, 0.005, 0.01, 0.02)
BEFORE = _FEED_HORIZON.text.replace(
    """
                WHERE pg_xact_status(x) = 'in progress'
                   OR current_setting('transaction_isolation') <> 'read committed'""",
    "",
)


def burn(until: float) -> None:
    while time.time() < until:
        pass


async def neighbour(hold: float, stop: asyncio.Event) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute("CREATE TEMP TABLE scratch (n int)")
        while not stop.is_set():
            async with connection.transaction():
                await connection.execute("INSERT INTO scratch VALUES (1)")
                await asyncio.sleep(hold)
    finally:
        await connection.close()


async def measure(statement: str, reads: int, reads_per_horizon: int) -> tuple[int, int]:
    """Rounds short, and horizon reads beyond each round's first."""
    dsn = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
    writer, reader = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    await writer.execute("CREATE TABLE IF NOT EXISTS written (n int)")
    short = again = 0
    for _ in range(reads):
        async with writer.transaction():
            committed = await writer.fetchval(
                "INSERT INTO written VALUES (1) RETURNING pg_current_xact_id()::text::bigint"
            )
        async with reader.transaction():
            for attempt in range(reads_per_horizon):
                horizon, unplaced = await reader.fetchrow(statement)
                if not unplaced:
                    break
                if attempt + 1 < reads_per_horizon:
                    again += 1
                    await reader.execute("SELECT pg_stat_clear_snapshot()")
        short += committed >= horizon
    await writer.close()
    await reader.close()
    return short, again


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("before", "current"), default="current")
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--reads-per-horizon", type=int, default=1)
    parser.add_argument("--burners", type=int, default=2)
    args = parser.parse_args()
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    until = time.time() + 3600
    burners = [multiprocessing.Process(target=burn, args=(until,), daemon=True)
               for _ in range(args.burners)]  # fmt: skip
    for process in burners:
        process.start()
    stop = asyncio.Event()
    neighbours = [asyncio.create_task(neighbour(hold, stop)) for hold in HOLDS]
    try:
        statement = BEFORE if args.variant == "before" else _FEED_HORIZON.text
        short, again = await measure(statement, args.reads, args.reads_per_horizon)
    finally:
        stop.set()
        await asyncio.gather(*neighbours)
        for process in burners:
            process.terminate()
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.close()
    print(
        f"{args.variant}: {short} of {args.reads} just-committed transactions not below the "
        f"horizon; {again} extra horizon reads (at most {args.reads_per_horizon} a round)"
    )


if __name__ == "__main__":
    asyncio.run(main())
