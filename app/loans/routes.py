from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import AfterValidator, WithJsonSchema
from starlette.responses import Response

from app.api.deps import (
    MerchantPrincipal,
    PageDep,
    ReaderPrincipal,
    SessionDep,
)
from app.api.fields import Currency
from app.api.pagination import Page, page_of
from app.api.responses import CREATED, POLLED, cached, json_response, locate
from app.api.routing import StrictRoute
from app.delinquency.rules import Bucket
from app.loans import service
from app.loans.models import LoanStatus
from app.loans.schemas import (
    LoanCancel,
    LoanCreate,
    LoanRead,
    ScheduleRead,
    loan_read,
    schedule_read,
)
from app.loans.service import LoanView
from app.money import request_currency
from app.products.schemas import PRODUCT_CODE_MAX_LENGTH
from app.risk.rules import FlagCode

router = APIRouter(tags=["loans"], route_class=StrictRoute)

_BUCKETS = (*(bucket.value for bucket in Bucket), *(bucket.label for bucket in Bucket))


def _a_bucket(value: str) -> str:
    if value in _BUCKETS:
        return value
    # curl's unencoded ?bucket=90+ arrives as "90 ": a 422 that did not say why (a tester's).
    sent_bare = value.replace(" ", "+") in _BUCKETS
    bare_plus = " (a + in a URL is %2B: sent bare, it arrives as a space)" if sent_bare else ""
    raise ValueError(f"is not a bucket: give one of {', '.join(_BUCKETS)}{bare_plus}")


BucketQuery = Annotated[
    Annotated[
        str, AfterValidator(_a_bucket), WithJsonSchema({"type": "string", "enum": list(_BUCKETS)})
    ]
    | None,
    Query(
        description="open loans in this bucket, by its days (`current`, `1-30`, `31-60`, "
        "`61-90`, `90+`) or its label (`M0` to `M3+`; a `+` is `%2B` in a URL), as the "
        "portfolio summary's `by_bucket` counts them: paid-off and cancelled loans keep the "
        "bucket they closed in and are left out",
    ),
]
_BY_LABEL = {bucket.label: bucket.value for bucket in Bucket}


@router.post("/v1/loans", status_code=201, response_model=LoanRead, responses=CREATED)
async def create_loan(
    body: LoanCreate, session: SessionDep, principal: MerchantPrincipal
) -> Response:
    view = await service.create_loan(
        session, principal, borrower_id=body.borrower_id, product_code=body.product_code,
        principal_amount=body.principal, term=body.term, disbursed_on=body.disbursed_on,
        first_due_date=body.first_due_date, merchant_order_ref=body.merchant_order_ref,
    )  # fmt: skip
    created = json_response(loan_read(view, with_schedule=True), 201)
    locate(created, f"/v1/loans/{view.loan.id}")
    return created


@router.get("/v1/loans", response_model=Page[LoanRead], responses=POLLED)
async def list_loans(
    request: Request,
    session: SessionDep,
    principal: ReaderPrincipal,
    page: PageDep,
    status: LoanStatus | None = None,
    bucket: BucketQuery = None,
    merchant_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    borrower_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    flag: Annotated[FlagCode | None, Query(description="loans with this flag open")] = None,
    product_code: Annotated[
        str | None, Query(min_length=1, max_length=PRODUCT_CODE_MAX_LENGTH)
    ] = None,
    currency: Annotated[Currency | None, Query()] = None,
    merchant_order_ref: Annotated[
        str | None,
        Query(min_length=1, max_length=100, description="the POS's order: its loan, if any"),
    ] = None,
) -> Response:
    """Dashboards poll this by bucket or flag: ``ETag``, and 304 on ``If-None-Match``.
    ``bucket`` selects open loans only, the ones the portfolio summary's buckets count, so a
    dashboard drills down from a bucket's count to the same loans, with the summary's own
    ``merchant_id``, ``product_code`` and ``currency``."""
    bucket = _BY_LABEL.get(bucket, bucket) if bucket else None
    views = await service.list_loans(
        session, principal, page=page, status=status, bucket=bucket, merchant_id=merchant_id,
        borrower_id=borrower_id, flag=flag, product_code=product_code,
        currency=None if currency is None else request_currency(currency),
        merchant_order_ref=merchant_order_ref,
    )  # fmt: skip
    return cached(request, page_of(views, page, loan_read, key=_loan_id))


@router.get("/v1/borrowers/{borrower_id}/loans", response_model=Page[LoanRead], responses=POLLED)
async def list_borrower_loans(
    borrower_id: str,
    request: Request,
    session: SessionDep,
    principal: ReaderPrincipal,
    page: PageDep,
) -> Response:
    """``GET /v1/loans?borrower_id=``'s list, polled the same way."""
    views = await service.list_loans(session, principal, page=page, borrower_id=borrower_id)
    return cached(request, page_of(views, page, loan_read, key=_loan_id))


@router.get("/v1/loans/{loan_id}", response_model=LoanRead, responses=POLLED)
async def get_loan(loan_id: str, request: Request, principal: ReaderPrincipal) -> Response:
    # No session dependency: a generator dependency's exit stack was a tenth of this route's
    # CPU (bench/http_load.py), and the read's connection goes back to the pool before the
    # response is rendered. app/loans/read_lane.py answers most of these requests first.
    view = await service.read_loan(principal, loan_id=loan_id)
    return cached(request, loan_read(view))


@router.get("/v1/loans/{loan_id}/schedule", response_model=ScheduleRead, responses=POLLED)
async def get_schedule(loan_id: str, request: Request, principal: ReaderPrincipal) -> Response:
    view = await service.read_loan(principal, loan_id=loan_id)
    return cached(request, schedule_read(view))


@router.post("/v1/loans/{loan_id}/cancel", response_model=LoanRead)
async def cancel_loan(
    loan_id: str, session: SessionDep, principal: MerchantPrincipal, body: LoanCancel | None = None
) -> LoanRead:
    view = await service.cancel_loan(
        session, principal, loan_id=loan_id, reason=body.reason if body else None
    )
    return loan_read(view)


def _loan_id(view: LoanView) -> str:
    return view.loan.id
