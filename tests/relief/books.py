"""The loan the relief tests start from."""

from typing import Any

import httpx

from tests.factories import World, world

LATE_FEE = {"kind": "fixed", "amount": "25.00"}


async def close(w: World, as_of: str) -> None:
    await w.post("/v1/close-runs", {"as_of": as_of}, headers=w.admin, expect=201)


async def late_loan(client: httpx.AsyncClient, **product: Any) -> tuple[World, str]:
    """1200.00 over 3 months from 2026-01-10 (412.00 due Feb 10, 408.00 Mar 10, 404.00 Apr
    10), 3 days' grace (and the product's other fields, e.g. a late fee); closed up to Feb 15:
    the first installment 5 days past due."""
    w = await world(client, amortization="equal_principal", annual_interest_rate="0.12",
                    grace_days=3, **product)  # fmt: skip
    await close(w, "2026-01-10")
    made = await w.loan(principal="1200.00", term=3, disbursed_on="2026-01-10")
    await close(w, "2026-02-15")
    return w, str(made["id"])
