from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.pagination import PageParams
from app.api_keys.models import Role
from app.db import Rate, insert_unless_taken
from app.delinquency.rules import LateFeePolicy
from app.errors import Conflict, FieldErrors, InvalidRequest, NotFound
from app.loans.schedule import Amortization
from app.money import (
    Rounding,
    parse_amount,
    parse_rate,
    request_currency,
    round_minor,
)
from app.products.models import Product
from app.products.schemas import FeeKind, ProductCreate

READERS = (Role.MERCHANT, Role.DASHBOARD)


class ProductNotFound(NotFound):
    code = "product_not_found"


class ProductCodeTaken(Conflict):
    code = "product_code_taken"


async def create_product(
    session: AsyncSession, principal: Principal, *, spec: ProductCreate
) -> Product:
    principal.require(Role.ADMIN)
    errors = FieldErrors()
    currency = errors.check(lambda: request_currency(spec.currency))
    rate = parse_rate(spec.annual_interest_rate)

    def amount(field: str, value: str | None) -> int | None:
        if value is None or currency is None:
            return None
        return errors.check(lambda: parse_amount(field, value, currency))

    if spec.amortization is Amortization.INTEREST_FREE and rate != 0:
        errors.add("annual_interest_rate", "an interest_free product has rate 0")
    multiple = None
    if spec.installment_multiple_of and spec.amortization is Amortization.EQUAL_PRINCIPAL:
        errors.add(
            "installment_multiple_of",
            "rounds a level installment: equal_installment and interest_free only",
        )
    elif spec.installment_multiple_of:
        multiple = amount("installment_multiple_of", spec.installment_multiple_of)
    product = Product(
        code=spec.code,
        name=spec.name,
        currency=currency,
        annual_interest_rate=rate,
        amortization=spec.amortization,
        term_options=sorted(spec.term_options),
        rounding=spec.rounding,
        installment_multiple_of_minor=multiple,
        grace_days=spec.grace_days,
    )
    if late := spec.late_fee:
        product.late_fee_kind = late.kind
        product.late_fee_amount_minor = amount("late_fee.amount", late.amount)
        product.late_fee_percent = errors.check(
            lambda: _fee_percent("late_fee.percent", late.percent)
        )
        product.late_fee_cap_minor = amount(
            "late_fee.cap_per_installment", late.cap_per_installment
        )
    if origination := spec.origination_fee:
        product.origination_fee_kind = origination.kind
        product.origination_fee_amount_minor = amount("origination_fee.amount", origination.amount)
        product.origination_fee_percent = errors.check(
            lambda: _fee_percent("origination_fee.percent", origination.percent)
        )
        product.origination_fee_collection = origination.collection
    errors.raise_any()
    if not await insert_unless_taken(session, product):
        raise ProductCodeTaken(f"a product with code {spec.code} exists")
    return product


def _fee_percent(field: str, percent: str | None) -> Decimal | None:
    if percent is None:
        return None
    value = parse_rate(percent)
    if not 0 < value <= 1:
        raise InvalidRequest.field(field, "must be above 0 and at most 1 (100 %)")
    return value


def late_fee_policy(product: Product) -> LateFeePolicy | None:
    """The product's late-fee policy, as the close charges it (None: it charges none)."""
    if product.late_fee_kind is None:
        return None
    return LateFeePolicy(
        grace_days=product.grace_days,
        kind=product.late_fee_kind,
        amount_minor=product.late_fee_amount_minor or 0,
        percent_ppm=int((product.late_fee_percent or 0) * Rate.SCALE),
        cap_minor=product.late_fee_cap_minor,
    )


def origination_fee_minor(product: Product, principal_minor: int) -> int:
    if product.origination_fee_kind == FeeKind.FIXED:
        return product.origination_fee_amount_minor or 0
    if product.origination_fee_kind == FeeKind.PERCENT:
        assert product.origination_fee_percent is not None
        return round_minor(
            principal_minor * product.origination_fee_percent, Rounding(product.rounding)
        )
    return 0


async def get_product(session: AsyncSession, principal: Principal, *, code: str) -> Product:
    principal.require(*READERS)
    product = await session.get(Product, code)
    if product is None:
        raise ProductNotFound(f"product {code} does not exist")
    return product


async def list_products(
    session: AsyncSession, principal: Principal, *, page: PageParams
) -> list[Product]:
    principal.require(*READERS)
    query = select(Product).order_by(Product.code).limit(page.limit + 1)
    if page.after_id:
        query = query.where(Product.code > page.after_id)
    return list(await session.scalars(query))
