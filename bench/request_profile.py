"""Where a payment's and a GET's time goes, in-process, on the book bench/http_load.py leaves
behind: the app driven by httpx on its ASGI interface, one request at a time, with each service
step of a payment timed (wall ms per payment, nested steps included in their callers), then a
`GET /v1/loans/{id}`'s read taken apart (CPU ms per read: the pooled connection, the service's
read with its checkout (on asyncpg itself since the fourteenth session, Database.read_rows), the
same SQL on a connection held, and the rendering).

    .venv/bin/python bench/http_load.py --duration 10          # once: the bench book
    .venv/bin/python bench/request_profile.py [--originations 0] [--payments 600] [--reads 3000]

``--payments 0`` profiles the reads only, ``--reads 0`` the payments only; ``--originations N``
times N ``POST /v1/loans`` first (CPU and statements each: run it under ``py-spy record`` for
where the CPU goes). Payments and originations also count their SQL statements.

Each run adds its payments to the book; compare runs against each other, not across books.
"""

import argparse
import asyncio
import functools
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import framework_floor  # noqa: E402 - a sibling script, not a package
import http_load  # noqa: E402 - likewise

DSN = "postgresql+asyncpg://postgres@127.0.0.1:5432/loanwatch_bench"


def timed(totals: Counter[str], module: Any, name: str) -> None:
    """Replace ``module.name`` (a coroutine function) by one adding its wall time to totals."""
    original = getattr(module, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            totals[f"{module.__name__}.{name}"] += time.perf_counter() - started

    setattr(module, name, wrapper)


@contextmanager
def counting_statements() -> Iterator[Counter[str]]:
    """The SQL statements the engine sends inside the block (``total``), through SQLAlchemy;
    GET's read, sent to asyncpg itself, is not among them."""
    from sqlalchemy import event

    from app.db import database

    sent: Counter[str] = Counter()

    def count(*_: Any) -> None:
        sent["total"] += 1

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def profile_originations(key: str, borrower_ids: list[str], count: int) -> None:
    """``POST /v1/loans`` as wrk's phase sends it, one at a time: CPU and statements each.
    Run under ``py-spy record`` for where the CPU goes."""
    import httpx

    from app.db import database
    from app.main import app

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:

        async def originate() -> None:
            ref = uuid.uuid4().hex
            answer = await c.post(
                "/v1/loans",
                json={"borrower_id": random.choice(borrower_ids), "term": 12,
                      "product_code": http_load.PRODUCT_CODE, "principal": "1000.00",
                      "merchant_order_ref": ref},
                headers={**headers, "Idempotency-Key": ref},
            )  # fmt: skip
            assert answer.status_code == 201, answer.text

        for _ in range(20):  # warm: statement caches, pool
            await originate()
        with counting_statements() as sent:
            cpu = time.process_time()
            for _ in range(count):
                await originate()
            cpu = time.process_time() - cpu
    print(f"{count} originations: {cpu / count * 1000:.2f} ms CPU each (the client's included), "
          f"{sent['total'] / count:.1f} statements each")  # fmt: skip
    await database.dispose()  # the next profile runs in another event loop


async def profile_payments(key: str, loan_ids: list[str], count: int) -> None:
    import httpx

    from app.db import database
    from app.delinquency import service as delinquency
    from app.loans import service as loans
    from app.main import app
    from app.payments import service as payments
    from app.promises import service as promises
    from app.risk import grades
    from app.risk import service as risk

    totals: Counter[str] = Counter()
    for module, names in (
        (payments, ["record_payment", "_store_position", "_applied_payments"]),
        (loans, ["get_loan", "load_installments"]),
        (delinquency, ["business_date"]),
        (promises, ["refresh_loan"]),
        (risk, ["refresh_loan", "evaluate_loans"]),
        (grades, ["grade_borrowers", "score_loans"]),
    ):
        for name in names:
            timed(totals, module, name)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:

        async def pay() -> None:
            ref = uuid.uuid4().hex
            answer = await c.post(
                f"/v1/loans/{random.choice(loan_ids)}/payments",
                json={"amount": "1.00", "external_ref": ref},
                headers={**headers, "Idempotency-Key": ref},
            )
            assert answer.status_code == 201, answer.text

        for _ in range(20):  # warm: statement caches, pool
            await pay()
        totals.clear()
        with counting_statements() as sent:
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                await pay()
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"{count} payments: {wall / count * 1000:.2f} ms wall, {cpu / count * 1000:.2f} ms CPU "
          f"each (the client's included), {sent['total'] / count:.1f} statements each")  # fmt: skip
    for step, seconds in totals.most_common():
        print(f"  {step:45s} {seconds / count * 1000:6.2f} ms")
    await database.dispose()  # the reads run in another event loop


async def profile_reads(key: str, loan_ids: list[str], count: int) -> None:
    from sqlalchemy.util import greenlet_spawn

    from app.api.deps import authenticate
    from app.api.responses import json_response
    from app.db import database
    from app.loans import service as loans
    from app.loans.schemas import loan_read

    principal = await authenticate(f"Bearer {key}")

    async def per_read(step: Any) -> float:
        started = time.process_time()
        for _ in range(count):
            await step()
        return (time.process_time() - started) / count * 1000

    async def checkout() -> None:
        pooled = await database.engine.raw_connection()
        await greenlet_spawn(pooled.close)

    async def read() -> None:
        await loans.read_loan(principal, loan_id=random.choice(loan_ids))

    async def read_and_render() -> None:
        view = await loans.read_loan(principal, loan_id=random.choice(loan_ids))
        json_response(loan_read(view))

    async with database.engine.connect() as connection:
        compiled = loans._LOAN_READ.compile(dialect=connection.dialect)
        values = {name: compiled.binds[name].value for name in compiled.positiontup or ()}
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None

        async def driver_read() -> None:
            arguments = {**values, "loan_id": random.choice(loan_ids)}
            await driver.fetch(str(compiled), *(arguments[n] for n in compiled.positiontup or ()))

        driver_ms = await per_read(driver_read)
    print(f"GET /v1/loans/{{id}}'s read, CPU per read over {count}:")
    print(f"  pooled connection alone          {await per_read(checkout):.3f} ms")
    print(f"  loans.read_loan, pooled          {await per_read(read):.3f} ms")
    print(f"  the same SQL through asyncpg     {driver_ms:.3f} ms (connection held)")
    print(f"  read and render                  {await per_read(read_and_render):.3f} ms")
    print(f"  the whole request, 32 at a time  {await whole_requests(key, loan_ids, count):.3f} ms")
    stack = await whole_requests(key, loan_ids, count, lane=False)
    print(f"  the same, the lane left out      {stack:.3f} ms")
    await database.dispose()


async def whole_requests(key: str, loan_ids: list[str], count: int, *, lane: bool = True) -> float:
    """CPU ms per ``GET /v1/loans/{id}`` through the ASGI interface `loanwatch serve` runs (the
    loan read's lane in front of the app; with ``lane=False`` the app alone: routing,
    middleware, authentication, read, rendering; no HTTP parsing), 32 in flight as wrk's
    connections."""
    from app.main import app, served

    headers = [(b"authorization", f"Bearer {key}".encode()), (b"host", b"bench")]
    micros = await framework_floor.cpu_per_request(
        served if lane else app, count, path=lambda: f"/v1/loans/{random.choice(loan_ids)}",
        headers=headers, in_flight=32,
    )  # fmt: skip
    return micros / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--originations", type=int, default=0)
    parser.add_argument("--payments", type=int, default=600)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--results", type=Path, help="an http_load results folder [the latest]")
    args = parser.parse_args()
    results = args.results or max((BENCH / "results").iterdir())
    loan_ids = (results / "loans.txt").read_text().split()
    os.environ["LOANWATCH_DATABASE_URL"] = DSN
    os.environ.setdefault("LOANWATCH_LOG_LEVEL", "warning")
    key = subprocess.run(
        [str(Path(sys.executable).parent / "loanwatch"), "api-keys", "create", "--role", "admin"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[-1]  # fmt: skip
    if args.originations:
        borrower_ids = (results / "borrowers.txt").read_text().split()
        asyncio.run(profile_originations(key, borrower_ids, args.originations))
    if args.payments:
        asyncio.run(profile_payments(key, loan_ids, args.payments))
    if args.reads:
        asyncio.run(profile_reads(key, loan_ids, args.reads))


if __name__ == "__main__":
    main()
