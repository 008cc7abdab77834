from fastapi import APIRouter, Request, Response

from app.api.deps import MerchantPrincipal, PageDep, ReaderPrincipal, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import CREATED, POLLED, cached, locate
from app.api.routing import StrictRoute
from app.payments import service
from app.payments.schemas import (
    PaymentCreate,
    PaymentRead,
    PaymentReverse,
    TransactionRead,
    payment_read,
    transaction_read,
)

router = APIRouter(tags=["payments"], route_class=StrictRoute)


@router.post(
    "/v1/loans/{loan_id}/payments", status_code=201, response_model=PaymentRead, responses=CREATED
)
async def record_payment(
    loan_id: str,
    body: PaymentCreate,
    session: SessionDep,
    principal: MerchantPrincipal,
    response: Response,
) -> PaymentRead:
    view = await service.record_payment(
        session, principal, loan_id=loan_id, amount=body.amount, received_on=body.received_on,
        channel=body.channel, external_ref=body.external_ref,
    )  # fmt: skip
    locate(response, f"/v1/payments/{view.payment.id}")
    return payment_read(view)


@router.post("/v1/payments/{payment_id}/reverse", response_model=PaymentRead)
async def reverse_payment(
    payment_id: str, body: PaymentReverse, session: SessionDep, principal: MerchantPrincipal
) -> PaymentRead:
    view = await service.reverse_payment(
        session,
        principal,
        payment_id=payment_id,
        reason=body.reason,
        reversed_on=body.reversed_on,
    )
    return payment_read(view)


@router.get("/v1/payments/{payment_id}", response_model=PaymentRead, responses=POLLED)
async def get_payment(
    payment_id: str, request: Request, session: SessionDep, principal: ReaderPrincipal
) -> Response:
    """A reconciler polls a payment for its reversal: ``ETag``, and 304 on ``If-None-Match``."""
    view = await service.get_payment(session, principal, payment_id=payment_id)
    return cached(request, payment_read(view))


@router.get(
    "/v1/loans/{loan_id}/transactions", response_model=Page[TransactionRead], responses=POLLED
)
async def list_transactions(
    loan_id: str, request: Request, session: SessionDep, principal: ReaderPrincipal, page: PageDep
) -> Response:
    """A reconciler polls the ledger: ``ETag``, and 304 on ``If-None-Match``."""
    _, rows = await service.list_transactions(session, principal, loan_id=loan_id, page=page)
    return cached(request, page_of(rows, page, transaction_read, key=lambda t: str(t.id)))
