"""The loan the relief tests start from."""

from typing import Any

import httpx
from sqlalchemy import func, select

from app.db import session_scope
from app.loans.models import LoanInstallment
from app.relief.models import Restructure
from tests.factories import World, world

LATE_FEE = {"kind": "fixed", "amount": "25.00"}


async def close(w: World, as_of: str) -> None:
    await w.post("/v1/close-runs", {"as_of": as_of}, headers=w.admin, expect=201)


async def late_loan(client: httpx.AsyncClient, **product: Any) -> tuple[World, str]:
    """1200.00 over 3 months from 2026-01-10 (412.00 due Feb 10, 408.00 Mar 10, 404.00 Apr
    10), 3 days' grace (and the product's other fields, e.g. a late fee); booked back-dated
    before the first close, of Feb 14, which charges the fee a walk from January would have
    charged that day; closed up to Feb 15: the first installment 5 days past due."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, **product)  # fmt: skip
    made = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    await close(w, "2026-02-14")
    await close(w, "2026-02-15")
    return w, str(made["id"])


async def stored() -> tuple[int, list[Any]]:
    """The restructures and every installment's terms: a refused request changes neither."""
    async with session_scope() as session:
        count = await session.scalar(select(func.count()).select_from(Restructure))
        rows = await session.execute(
            select(LoanInstallment.due_date, LoanInstallment.principal_minor,
                   LoanInstallment.interest_minor, LoanInstallment.fees_minor)
            .order_by(LoanInstallment.loan_id, LoanInstallment.seq)
        )  # fmt: skip
        return int(count or 0), [tuple(row) for row in rows]


async def assert_refused(
    w: World, loan_id: str, body: dict[str, Any], override: dict[str, Any], field: str
) -> None:
    """``body`` with ``override`` (None drops a field) is a 422 naming ``field`` alone, and
    nothing is stored."""
    before = await stored()
    sent = {k: v for k, v in {**body, **override}.items() if v is not None}
    response = await w.post(f"/v1/loans/{loan_id}/restructures", sent)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert await stored() == before
