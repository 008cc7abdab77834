"""The class of every route (``APIRouter(route_class=StrictRoute)``): what FastAPI's own
handling of a request leaves out.

* A query parameter the route does not take is refused, 422 ``validation_error`` naming each
  one (the first 20 of more): FastAPI ignores it, so a filter that does not exist
  (``GET /v1/borrowers?merchant_id=``) answered unfiltered data as if it had been applied.
* The caller is checked before the request is refused for its input (SPEC: a missing or
  invalid key is 401, a wrong role 403): FastAPI parses a JSON body before it runs any
  dependency, so a body that is not JSON was a 422 to a caller with no key. Such a request,
  and one with an unknown query parameter, goes through the route's principal dependency
  before its refusal is answered.

Neither costs a request it does not concern more than a call (about 0.45 us,
docs/benchmarks.md): the parameters a route takes are found once, when it is built, and looked
at only when the query string is not empty; the caller is checked only on the way to a
refusal.
"""

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.api.deps import PRINCIPAL_DEPENDENCIES
from app.errors import InvalidRequest

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class StrictRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()
        takes = query_parameters(self)
        principals = _principal_dependencies(self.dependant)
        reads_body = self.body_field is not None

        async def check_caller(request: Request) -> None:
            for principal in principals:
                await principal(request)

        # Also asked by RequireJson before it refuses a body's media type.
        self.check_caller = check_caller

        async def handler(request: Request) -> Response:
            if request.scope["query_string"]:
                unknown = [name for name in request.query_params if name not in takes]
                if unknown:
                    await check_caller(request)
                    raise _unknown_parameters(unknown, takes)
            if not reads_body:
                return await handle(request)
            try:
                return await handle(request)
            except RequestValidationError:
                # Raised before the dependencies ran (the body is not JSON) or after they
                # passed (the fields are wrong): asking again answers the first case.
                await check_caller(request)
                raise
            except HTTPException as exc:
                if exc.status_code == 400:  # bytes FastAPI could not read as JSON
                    await check_caller(request)
                raise

        return handler


def query_parameters(route: APIRoute) -> frozenset[str]:
    """The query parameters ``route`` takes, its dependencies' included (``limit`` and
    ``cursor`` of a list): the ones its OpenAPI operation lists
    (tests/api/test_query_parameters.py)."""
    names = {
        field.alias
        for field in get_flat_params(route.dependant)
        if isinstance(field.field_info, params.Query)
    }
    extra = (route.openapi_extra or {}).get("parameters", [])
    names.update(p["name"] for p in extra if p.get("in") == "query")
    return frozenset(names)


def _principal_dependencies(
    dependant: Dependant,
) -> list[Callable[[Request], Awaitable[object]]]:
    found: list[Callable[[Request], Awaitable[object]]] = []
    pending = list(dependant.dependencies)
    while pending:
        sub = pending.pop()
        if sub.call in PRINCIPAL_DEPENDENCIES and sub.call not in found:
            found.append(sub.call)
        pending.extend(sub.dependencies)
    return found


# A query of thousands of unknown names is answered with the first few, not a megabyte of
# errors each repeating what the route takes (a tester's).
_NAMED_AT_MOST = 20


def _unknown_parameters(unknown: list[str], takes: frozenset[str]) -> InvalidRequest:
    known = f"it takes {', '.join(sorted(takes))}" if takes else "it takes none"
    message = f"not a query parameter of this operation ({known})"
    named = unknown[:_NAMED_AT_MOST]
    more = f" and {len(unknown) - len(named)} more" if len(unknown) > len(named) else ""
    return InvalidRequest(
        f"the query names parameters this operation does not take: "
        f"{', '.join(repr(name) for name in named)}{more}; {known}",
        errors=[{"field": name, "message": message, "type": "extra_forbidden"}
                for name in named],
    )  # fmt: skip
