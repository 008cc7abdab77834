from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api.deps import DashboardPrincipal, PageDep, SessionDep
from app.api.pagination import Page, page_of
from app.api.responses import POLLED, cached
from app.api.routing import StrictRoute
from app.events import service
from app.events.schemas import EventRead

router = APIRouter(prefix="/v1/events", tags=["events"], route_class=StrictRoute)


@router.get("", response_model=Page[EventRead], responses=POLLED)
async def list_events(
    request: Request,
    session: SessionDep,
    principal: DashboardPrincipal,
    page: PageDep,
    type: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=500,
            description="event types or patterns, comma-separated: loan.created,risk.*",
        ),
    ] = None,
    after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            description="only events after this one: an event id (evt_…, the webhook-id of "
            "the last delivery received) or an RFC 3339 instant",
        ),
    ] = None,
) -> Response:
    """The fallback feed for missed webhooks, polled: ``ETag``, and 304 on ``If-None-Match``."""
    events = await service.list_events(session, principal, page=page, type_=type, after=after)
    return cached(request, page_of(events, page, EventRead.from_model, key=service.feed_key))
