"""The floor the API is measured against: a bare Starlette app on an asyncpg pool.

It writes and reads the same tables as Loanwatch (``loan``, ``loan_installment``, ``payment``,
``ledger_transaction``, created by Loanwatch's migrations) with hand-written SQL and none of the
API's machinery: no authentication, no idempotency records, no ORM, no Pydantic, no events,
no credit-limit or duplicate checks. ``bench/http_load.py`` serves it with one uvicorn worker
after the API and runs the same wrk phases against it:

* ``POST /loans``: one loan row + 12 installment rows (``executemany``) in one transaction.
* ``POST /loans/{id}/payments``: lock the loan row, insert a payment and its ledger row.
* ``GET /loans/{id}``: one loan row by primary key.

Request bodies are the API's (``/v1`` dropped from the paths). Rows are valid: the borrower
comes from the body, the merchant from ``BENCH_MERCHANT_ID``; the product's rate, amortization
and rounding are read from ``BENCH_PRODUCT_CODE`` once at start-up.

    BENCH_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/loanwatch_bench \\
    BENCH_MERCHANT_ID=mer_... BENCH_PRODUCT_CODE=BENCH12 \\
    .venv/bin/uvicorn --app-dir bench baseline_app:app --port 8032 --log-level warning
"""

import calendar
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.ids import new_id

# The API's engine: up to 2 x db_pool_size (10) connections (app/config.py, app/db.py).
POOL_MIN = 10
POOL_MAX = 20

LOAN_COLUMNS = (
    "id, borrower_id, merchant_id, product_code, currency, principal_minor, "
    "annual_interest_rate, amortization, rounding, term, disbursed_on, first_due_date, "
    "merchant_order_ref, status, principal_outstanding_minor, credit_balance_minor, "
    "refund_due_minor, days_past_due, bucket, created_at, updated_at"
)
INSERT_LOAN = (
    f"INSERT INTO loan ({LOAN_COLUMNS}) VALUES "
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'active', $6, 0, 0, 0, 'current', "
    "$14, $14)"
)
INSERT_INSTALLMENT = (
    "INSERT INTO loan_installment (loan_id, seq, due_date, principal_minor, interest_minor, "
    "fees_minor, late_fees_minor, paid_principal_minor, paid_interest_minor, paid_fees_minor, "
    "interest_waived_minor, fees_waived_minor, status) "
    "VALUES ($1, $2, $3, $4, $5, 0, 0, 0, 0, 0, 0, 0, 'pending')"
)
SELECT_LOAN = f"SELECT {LOAN_COLUMNS} FROM loan WHERE id = $1"
LOCK_LOAN = "SELECT id, currency FROM loan WHERE id = $1 FOR UPDATE"
INSERT_PAYMENT = (
    "INSERT INTO payment (id, loan_id, amount_minor, received_on, channel, external_ref, "
    "status, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'applied', $7)"
)
INSERT_LEDGER = (
    "INSERT INTO ledger_transaction (loan_id, kind, amount_minor, currency, effective_on, "
    "payment_id, created_at) VALUES ($1, 'payment', $2, $3, $4, $5, $6)"
)


@dataclass(frozen=True)
class Product:
    code: str
    currency: str
    rate_ppm: int
    amortization: str
    rounding: str


class State:
    pool: asyncpg.Pool
    product: Product
    merchant_id: str


state = State()


def add_months(day: date, months: int) -> date:
    month0 = day.month - 1 + months
    year, month = day.year + month0 // 12, month0 % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def to_minor(amount: str) -> int:
    return int(Decimal(amount) * 100)


def fmt_minor(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def schedule(principal: int, rate_ppm: int, term: int) -> list[tuple[int, int]]:
    """Equal principal parts (the last absorbs the residual) and simple monthly interest on
    the outstanding principal, in integer minor units: cheap and valid, not the API's math."""
    part, outstanding, parts = principal // term, principal, []
    for seq in range(1, term + 1):
        this = outstanding if seq == term else part
        parts.append((this, outstanding * rate_ppm // 12_000_000))
        outstanding -= this
    return parts


def jsonable(row: asyncpg.Record) -> dict[str, Any]:
    return {
        key: value.isoformat() if isinstance(value, date | datetime) else value
        for key, value in row.items()
    }


async def create_loan(request: Request) -> Response:
    body = json.loads(await request.body())
    product, today, now = state.product, date.today(), datetime.now(UTC)
    principal, term = to_minor(body["principal"]), int(body["term"])
    loan_id = new_id("loan")
    first_due = add_months(today, 1)
    parts = schedule(principal, product.rate_ppm, term)
    installments = [
        (loan_id, seq, add_months(first_due, seq - 1), p, i)
        for seq, (p, i) in enumerate(parts, start=1)
    ]
    async with state.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            INSERT_LOAN, loan_id, body["borrower_id"], state.merchant_id, product.code,
            product.currency, principal, product.rate_ppm, product.amortization,
            product.rounding, term, today, first_due, body["merchant_order_ref"], now,
        )  # fmt: skip
        await conn.executemany(INSERT_INSTALLMENT, installments)
    return JSONResponse(
        {
            "id": loan_id,
            "borrower_id": body["borrower_id"],
            "merchant_id": state.merchant_id,
            "product_code": product.code,
            "currency": product.currency,
            "principal": fmt_minor(principal),
            "term": term,
            "disbursed_on": today.isoformat(),
            "first_due_date": first_due.isoformat(),
            "merchant_order_ref": body["merchant_order_ref"],
            "status": "active",
            "created_at": now.isoformat(),
            "schedule": [
                {
                    "seq": seq,
                    "due_date": due.isoformat(),
                    "principal": fmt_minor(p),
                    "interest": fmt_minor(i),
                    "total": fmt_minor(p + i),
                }
                for _, seq, due, p, i in installments
            ],
        },
        status_code=201,
    )


async def record_payment(request: Request) -> Response:
    loan_id = request.path_params["loan_id"]
    body = json.loads(await request.body())
    amount, today, now = to_minor(body["amount"]), date.today(), datetime.now(UTC)
    payment_id = new_id("pay")
    channel = body.get("channel", "pos")
    async with state.pool.acquire() as conn, conn.transaction():
        loan = await conn.fetchrow(LOCK_LOAN, loan_id)
        if loan is None:
            return JSONResponse({"detail": f"loan {loan_id} does not exist"}, status_code=404)
        await conn.execute(
            INSERT_PAYMENT, payment_id, loan_id, amount, today, channel,
            body.get("external_ref"), now,
        )  # fmt: skip
        await conn.execute(INSERT_LEDGER, loan_id, amount, loan["currency"], today, payment_id, now)
    return JSONResponse(
        {
            "id": payment_id,
            "loan_id": loan_id,
            "amount": fmt_minor(amount),
            "currency": loan["currency"],
            "received_on": today.isoformat(),
            "channel": channel,
            "external_ref": body.get("external_ref"),
            "status": "applied",
            "created_at": now.isoformat(),
        },
        status_code=201,
    )


async def get_loan(request: Request) -> Response:
    loan_id = request.path_params["loan_id"]
    async with state.pool.acquire() as conn:
        row = await conn.fetchrow(SELECT_LOAN, loan_id)
    if row is None:
        return JSONResponse({"detail": f"loan {loan_id} does not exist"}, status_code=404)
    return JSONResponse(jsonable(row))


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(
        os.environ["BENCH_DATABASE_DSN"], min_size=POOL_MIN, max_size=POOL_MAX
    )
    product = await pool.fetchrow(
        "SELECT code, currency, annual_interest_rate, amortization, rounding FROM product "
        "WHERE code = $1",
        os.environ["BENCH_PRODUCT_CODE"],
    )
    if product is None:
        raise RuntimeError(f"no product {os.environ['BENCH_PRODUCT_CODE']}")
    state.pool = pool
    state.merchant_id = os.environ["BENCH_MERCHANT_ID"]
    state.product = Product(
        code=product["code"],
        currency=product["currency"],
        rate_ppm=product["annual_interest_rate"],
        amortization=product["amortization"],
        rounding=product["rounding"],
    )
    try:
        yield
    finally:
        await pool.close()


app = Starlette(
    routes=[
        Route("/loans", create_loan, methods=["POST"]),
        Route("/loans/{loan_id}/payments", record_payment, methods=["POST"]),
        Route("/loans/{loan_id}", get_loan, methods=["GET"]),
    ],
    lifespan=lifespan,
)
