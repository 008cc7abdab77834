"""The class of every route (``APIRouter(route_class=StrictRoute)``): a query parameter the
route does not take is refused, 422 ``validation_error`` naming each one. FastAPI ignores it,
so a filter that does not exist (``GET /v1/borrowers?merchant_id=``) answered unfiltered data
as if it had been applied.

The caller's key and role are checked first, through the route's principal dependency (SPEC:
a missing or invalid key is 401, a wrong role 403, whatever else is wrong with the request).

It costs a request without a query string one call (about 0.45 us, docs/benchmarks.md): the
parameters a route takes are found once, when it is built, and looked at only when the query
string is not empty.
"""

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from app.api.auth import Principal
from app.api.deps import PRINCIPAL_DEPENDENCIES
from app.errors import InvalidRequest

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class StrictRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()
        takes = query_parameters(self)
        principals = _principal_dependencies(self.dependant)

        async def check_caller(request: Request) -> None:
            for principal in principals:
                await principal(request)

        async def handler(request: Request) -> Response:
            if request.scope["query_string"]:
                unknown = [name for name in request.query_params if name not in takes]
                if unknown:
                    await check_caller(request)
                    raise _unknown_parameters(unknown, takes)
            return await handle(request)

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
) -> list[Callable[[Request], Awaitable[Principal]]]:
    found: list[Callable[[Request], Awaitable[Principal]]] = []
    pending = list(dependant.dependencies)
    while pending:
        sub = pending.pop()
        if sub.call in PRINCIPAL_DEPENDENCIES and sub.call not in found:
            found.append(sub.call)
        pending.extend(sub.dependencies)
    return found


def _unknown_parameters(unknown: list[str], takes: frozenset[str]) -> InvalidRequest:
    known = f"it takes {', '.join(sorted(takes))}" if takes else "it takes none"
    message = f"not a query parameter of this operation ({known})"
    return InvalidRequest(
        f"the query names parameters this operation does not take: "
        f"{', '.join(repr(name) for name in unknown)}; {known}",
        errors=[{"field": name, "message": message, "type": "extra_forbidden"}
                for name in unknown],
    )  # fmt: skip
