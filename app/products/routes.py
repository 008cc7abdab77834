from operator import attrgetter

from fastapi import APIRouter, Request, Response

from app.api.deps import AdminPrincipal, PageDep, ReaderPrincipal, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import CREATED, POLLED, cached, locate
from app.api.routing import StrictRoute
from app.products import service
from app.products.schemas import ProductCreate, ProductRead

router = APIRouter(prefix="/v1/products", tags=["products"], route_class=StrictRoute)


@router.post("", status_code=201, response_model=ProductRead, responses=CREATED)
async def create_product(
    body: ProductCreate, session: SessionDep, principal: AdminPrincipal, response: Response
) -> ProductRead:
    product = await service.create_product(session, principal, spec=body)
    locate(response, f"/v1/products/{product.code}")  # codes are URL-safe
    return ProductRead.from_model(product)


@router.get("", response_model=Page[ProductRead], responses=POLLED)
async def list_products(
    request: Request, session: SessionDep, principal: ReaderPrincipal, page: PageDep
) -> Response:
    products = await service.list_products(session, principal, page=page)
    return cached(request, page_of(products, page, ProductRead.from_model, key=attrgetter("code")))


@router.get("/{code}", response_model=ProductRead, responses=POLLED)
async def get_product(
    code: str, request: Request, session: SessionDep, principal: ReaderPrincipal
) -> Response:
    product = await service.get_product(session, principal, code=code)
    return cached(request, ProductRead.from_model(product))
