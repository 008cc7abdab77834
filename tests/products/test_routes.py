"""Products over HTTP: what a product's policy may say."""

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from app.db import session_scope
from app.products.models import Product
from tests.factories import world


async def product_count() -> int:
    async with session_scope() as session:
        return int(await session.scalar(select(func.count()).select_from(Product)) or 0)


def body(**fields: Any) -> dict[str, Any]:
    return {"code": "LATE", "name": "n", "annual_interest_rate": "0.12",
            "amortization": "equal_installment", "term_options": [12], **fields}  # fmt: skip


async def test_a_fixed_late_fee_capped_below_its_amount_is_refused(
    client: httpx.AsyncClient,
) -> None:
    w = await world(client)
    before = await product_count()
    late_fee = {"kind": "fixed", "amount": "20.00", "cap_per_installment": "15.00"}
    response = await client.post("/v1/products", json=body(late_fee=late_fee), headers=w.admin)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert [e["field"] for e in problem["errors"]] == ["late_fee.cap_per_installment"]
    assert problem["detail"] == (
        "late_fee.cap_per_installment: a fixed fee is charged at most once per installment, "
        "so a cap of 15.00 below its amount 20.00 would silently lower it"
    )
    assert await product_count() == before


async def test_a_fee_sent_as_an_amount_is_told_it_is_an_object(client: httpx.AsyncClient) -> None:
    """Pydantic's "a valid dictionary or object to extract fields from" spoke Python (a
    tester's, for an origination fee of "0.00")."""
    w = await world(client)
    before = await product_count()
    for field in ("origination_fee", "late_fee"):
        response = await client.post("/v1/products", json=body(**{field: "0.00"}),
                                     headers=w.admin)  # fmt: skip
        assert response.status_code == 422, response.text
        assert response.json()["errors"] == [{
            "field": field, "message": "must be a JSON object (its fields are in /openapi.json)",
            "type": "model_attributes_type",
        }]  # fmt: skip
    assert await product_count() == before


async def test_a_late_fee_cap_that_can_bind_is_accepted(client: httpx.AsyncClient) -> None:
    w = await world(client)
    for code, late_fee in [
        # A cap equal to the fixed fee changes nothing, but says nothing false either.
        ("FIXED", {"kind": "fixed", "amount": "20.00", "cap_per_installment": "20.00"}),
        ("ABOVE", {"kind": "fixed", "amount": "20.00", "cap_per_installment": "25.00"}),
        # A percent fee grows with the unpaid part: there the cap is what limits it.
        ("PERCENT", {"kind": "percent", "percent": "0.05", "cap_per_installment": "15.00"}),
    ]:
        response = await client.post(
            "/v1/products", json=body(code=code, late_fee=late_fee), headers=w.admin
        )
        assert response.status_code == 201, response.text
        assert response.json()["late_fee"] == {**late_fee, **{
            "amount": late_fee.get("amount"), "percent": late_fee.get("percent"),
        }}  # fmt: skip


async def test_twins_created_at_once_are_told_the_code_is_taken(client: httpx.AsyncClient) -> None:
    """The uniqueness check and the insert are apart: a concurrent twin that passed the check
    is told what a later one is, not a generic conflict."""
    w = await world(client)
    for path, twin, code in (
        ("/v1/products", body(code="TWIN"), "product_code_taken"),
        ("/v1/gateways", {"name": "twinpay"}, "gateway_exists"),
    ):
        answers = await asyncio.gather(
            *(client.post(path, json=twin, headers=w.admin) for _ in range(4))
        )
        assert sorted(a.status_code for a in answers) == [201, 409, 409, 409], path
        assert {a.json()["code"] for a in answers if a.status_code == 409} == {code}, path
