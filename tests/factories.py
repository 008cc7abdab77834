"""Builders that set up a world through the API itself, with keyword defaults."""

import itertools
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx

from app.api_keys.models import Role
from app.api_keys.service import issue_key
from app.db import session_scope

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


async def api_key(role: Role, merchant_id: str | None = None) -> str:
    async with session_scope() as session:
        _, secret = await issue_key(session, role=role, merchant_id=merchant_id)
    return secret


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class World:
    """An admin, a merchant with its key, and a product: what most tests start from."""

    client: httpx.AsyncClient
    admin: dict[str, str]
    merchant_id: str
    merchant: dict[str, str]
    product_code: str

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None,
                   expect: int | None = None) -> httpx.Response:  # fmt: skip
        response = await self.client.post(path, json=body, headers=headers or self.merchant)
        if expect is not None:
            assert response.status_code == expect, response.text
        return response

    async def get(self, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.client.get(path, headers=headers or self.merchant)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def borrower(self, **fields: Any) -> dict[str, Any]:
        body = {"external_id": unique("cust"), "name": "Li Wei", "phone": "+8613800138000",
                "monthly_income": "10000.00", **fields}  # fmt: skip
        return dict((await self.post("/v1/borrowers", body, expect=201)).json())

    async def loan(self, borrower_id: str | None = None, **fields: Any) -> dict[str, Any]:
        if borrower_id is None:
            borrower_id = (await self.borrower())["id"]
        body = {"borrower_id": borrower_id, "product_code": self.product_code,
                "principal": "1200.00", "term": 12, "merchant_order_ref": unique("order"),
                **fields}  # fmt: skip
        return dict((await self.post("/v1/loans", body, expect=201)).json())

    async def pay(self, loan_id: str, amount: str, received_on: date | str | None = None,
                  **fields: Any) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {"amount": amount, **fields}
        if received_on is not None:
            body["received_on"] = str(received_on)
        return dict((await self.post(f"/v1/loans/{loan_id}/payments", body, expect=201)).json())


async def product(
    client: httpx.AsyncClient, admin: dict[str, str], **fields: Any
) -> dict[str, Any]:
    body = {"code": unique("P"), "name": "Appliance 12m", "annual_interest_rate": "0.12",
            "amortization": "equal_installment", "term_options": [3, 6, 12, 24],
            "grace_days": 3, **fields}  # fmt: skip
    response = await client.post("/v1/products", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def world(client: httpx.AsyncClient, **product_fields: Any) -> World:
    admin = auth(await api_key(Role.ADMIN))
    response = await client.post("/v1/merchants", json={"name": "Acme"}, headers=admin)
    assert response.status_code == 201, response.text
    merchant_id = response.json()["id"]
    merchant = auth(await api_key(Role.MERCHANT, merchant_id))
    code = (await product(client, admin, **product_fields))["code"]
    return World(client, admin, merchant_id, merchant, code)
