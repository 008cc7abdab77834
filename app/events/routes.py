from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import DashboardPrincipal, PageDep, SessionDep
from app.api.pagination import Page, page_of
from app.events import service
from app.events.schemas import EventRead

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("", response_model=Page[EventRead])
async def list_events(
    session: SessionDep,
    principal: DashboardPrincipal,
    page: PageDep,
    type: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[
        str | None,
        Query(
            max_length=64,
            description="only events after this one: an event id (evt_…, the webhook-id of "
            "the last delivery received) or an RFC 3339 instant",
        ),
    ] = None,
) -> Page[EventRead]:
    events = await service.list_events(session, principal, page=page, type_=type, after=after)
    return page_of(events, page, EventRead.from_model, key=lambda e: str(e.position))
