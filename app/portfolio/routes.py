import base64
import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse

from app.api.deps import PageDep, ReaderPrincipal, SessionDep
from app.api.fields import Currency, IsoDate
from app.api.pagination import Page, page_of
from app.api.responses import LIVE, POLLED, cached
from app.api.routing import StrictRoute
from app.portfolio import service
from app.portfolio.close import alert_event
from app.portfolio.positions import Scope
from app.portfolio.schemas import AlertRead, RollRatesRead, SegmentsRead, SummaryRead, VintagesRead
from app.products.schemas import PRODUCT_CODE_MAX_LENGTH

router = APIRouter(tags=["portfolio"], route_class=StrictRoute)


async def portfolio_scope(
    principal: ReaderPrincipal,
    merchant_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    product_code: Annotated[
        str | None, Query(min_length=1, max_length=PRODUCT_CODE_MAX_LENGTH)
    ] = None,
    currency: Annotated[
        Currency | None, Query(description="Default: the configured currency")
    ] = None,
) -> Scope:
    """The part of the book a view covers: the filters every portfolio view takes."""
    return service.scope_for(
        principal, merchant_id=merchant_id, product_code=product_code, currency=currency
    )


ScopeDep = Annotated[Scope, Depends(portfolio_scope)]

# Roll rates, vintages and segments change only when a close completes.
PER_CLOSE = "private, max-age=60"


@router.get("/v1/portfolio/summary", response_model=SummaryRead, responses=POLLED)
async def summary(
    request: Request,
    session: SessionDep,
    scope: ScopeDep,
) -> Response:
    """Open loans and principal by status and bucket, 30+ and 90+ delinquency rates, open
    flags by code, collections today and this month: live (base of the last close plus
    every write since), delinquency as of the business date."""
    return cached(request, await service.summary(session, scope), LIVE)


@router.get("/v1/portfolio/roll-rates", response_model=RollRatesRead, responses=POLLED)
async def roll_rates(
    request: Request,
    session: SessionDep,
    scope: ScopeDep,
    from_date: Annotated[IsoDate | None, Query(alias="from")] = None,
    to_date: Annotated[IsoDate | None, Query(alias="to")] = None,
) -> Response:
    """The bucket-to-bucket matrix (counts, principal at ``to``, row shares) of the loans
    open at both closes. Defaults: the last close and the one before."""
    body = await service.roll_rates(session, scope, from_date=from_date, to_date=to_date)
    return cached(request, body, PER_CLOSE)


@router.get("/v1/portfolio/vintages", response_model=VintagesRead, responses=POLLED)
async def vintages(
    request: Request,
    session: SessionDep,
    scope: ScopeDep,
) -> Response:
    """Per origination month, the share of loans (and principal) ever more than 30 days past
    due by month on book."""
    return cached(request, await service.vintages(session, scope), PER_CLOSE)


class SegmentDimension(StrEnum):
    MERCHANT = "merchant"
    PRODUCT = "product"
    VINTAGE = "vintage"


@router.get("/v1/portfolio/segments", response_model=SegmentsRead, responses=POLLED)
async def segments(
    request: Request,
    session: SessionDep,
    scope: ScopeDep,
    by: SegmentDimension = SegmentDimension.MERCHANT,
) -> Response:
    """Per merchant, product or origination month, as of the last close: loans, principal,
    first-payment default (10+ and 30+ DPD on the first installment, recent cohort),
    current-to-30 roll rate over a month, 30+ and 90+ rates."""
    return cached(request, await service.segments(session, scope, by=by.value), PER_CLOSE)


@router.get("/v1/portfolio/alerts", response_model=Page[AlertRead], responses=POLLED)
async def alerts(
    request: Request,
    session: SessionDep,
    principal: ReaderPrincipal,
    page: PageDep,
    since: IsoDate | None = None,
    merchant_id: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    product_code: Annotated[
        str | None, Query(min_length=1, max_length=PRODUCT_CODE_MAX_LENGTH)
    ] = None,
    currency: Annotated[Currency | None, Query()] = None,
) -> Response:
    """Segment alerts the closes raised (``risk.segment_alert``), oldest first: a merchant's
    (its own only, for a merchant key) or a product's with ``merchant_id`` or
    ``product_code``. Polled: ``ETag``, and 304 on ``If-None-Match``."""
    rows = await service.list_alerts(
        session, principal, page=page, since=since, merchant_id=merchant_id,
        product_code=product_code, currency=currency,
    )  # fmt: skip
    # Raised only by a close, as the other per-close figures are (it said no-cache, against
    # the freshness docs/portfolio.md gives it: a tester's).
    return cached(
        request,
        page_of(rows, page, lambda alert: AlertRead.model_validate(alert_event(alert))),
        PER_CLOSE,
    )


DASHBOARD = (Path(__file__).parent / "dashboard.html").read_text()


def _inline_hash(page: str, tag: str) -> str:
    """The CSP source of the page's one inline ``<tag>`` element: its content's SHA-256."""
    content = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
    return "'sha256-" + base64.b64encode(hashlib.sha256(content.encode()).digest()).decode() + "'"


# The page takes an API key: it runs its own script and style alone, reads this origin alone,
# and no other site may frame it (sent with no such headers, any site could: a tester's).
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_inline_hash(DASHBOARD, 'script')}; "
        f"style-src {_inline_hash(DASHBOARD, 'style')}; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    """A page that polls the summary with a key the user types in (kept for the tab only)."""
    return HTMLResponse(DASHBOARD, headers=DASHBOARD_HEADERS)
