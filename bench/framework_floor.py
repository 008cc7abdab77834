"""What the framework costs a request before any of Loanwatch's own work: CPU per request of a
trivial route (a path parameter, a fixed two-byte JSON answer), driven in-process on the ASGI
interface, one request at a time, no network and no database:

* bare Starlette and bare FastAPI (no middleware), the route alone, as FastAPI's own route
  and as Loanwatch's (``app.api.routing.StrictRoute``, which checks the query's parameters);
* FastAPI with Loanwatch's routers (no middleware), the route after all of them, once with the
  routers added as plain routes (as ``app.main.create_app`` does) and once through
  ``include_router``;
* Loanwatch's app as built (its middleware and error handling), the route first and last.

The difference between the two FastAPI-with-routers rows is the cost of FastAPI's
included-router matching; the last two rows bound what any route of the API pays before its
own code runs, against the bare Starlette app that ``bench/baseline_app.py`` is built on.

    .venv/bin/python bench/framework_floor.py [--requests 20000]
"""

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message

PATH = "/floor/{item_id}"


def answer() -> Response:
    return Response(b"{}", media_type="application/json")


async def starlette_endpoint(_: Request) -> Response:
    return answer()


async def fastapi_endpoint(item_id: str) -> Response:
    return answer()


def fastapi_route() -> BaseRoute:
    app = FastAPI()
    app.get(PATH)(fastapi_endpoint)
    return app.router.routes[-1]


def strict_route() -> BaseRoute:
    from app.api.routing import StrictRoute

    router = APIRouter(route_class=StrictRoute)
    router.get(PATH)(fastapi_endpoint)
    return router.routes[-1]


async def cpu_per_request(
    app: ASGIApp,
    requests: int,
    *,
    path: Callable[[], str] = lambda: "/floor/abc",
    headers: list[tuple[bytes, bytes]] | None = None,
    in_flight: int = 1,
) -> float:
    """Microseconds of this process's CPU per GET of ``path()`` through ``app``'s ASGI
    interface (no HTTP parsing), ``in_flight`` at a time, after a warm-up; every answer must
    be a 200. Also bench/request_profile.py's driver."""
    statuses: list[int] = []
    sent_headers = headers or [(b"host", b"bench")]

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def connection(count: int) -> None:
        for _ in range(count):
            url = path()
            scope: dict[str, Any] = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "http", "path": url, "raw_path": url.encode(),
                "query_string": b"", "root_path": "", "headers": sent_headers,
                "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
            }  # fmt: skip
            await app(scope, receive, send)

    await connection(500)
    each = requests // in_flight
    started = time.process_time()
    await asyncio.gather(*(connection(each) for _ in range(in_flight)))
    spent = time.process_time() - started
    if set(statuses) != {200}:
        raise SystemExit(f"the route answered {sorted(set(statuses))}")
    return spent / (each * in_flight) * 1e6


def with_routers(add: Callable[[FastAPI, Any], None]) -> FastAPI:
    from app.main import ROUTERS

    app = FastAPI()
    for router in ROUTERS:
        add(app, router)
    app.router.routes.append(fastapi_route())
    return app


def loanwatch(route_first: bool) -> FastAPI:
    from app.main import create_app

    app = create_app()
    route = fastapi_route()
    if route_first:
        app.router.routes.insert(0, route)
    else:
        app.router.routes.append(route)
    return app


async def main(requests: int) -> None:
    cases: list[tuple[str, ASGIApp]] = [
        ("Starlette, the route alone", Starlette(routes=[Route(PATH, starlette_endpoint)])),
        ("FastAPI, the route alone", FastAPI(routes=[fastapi_route()])),
        ("FastAPI, the route alone as a StrictRoute", FastAPI(routes=[strict_route()])),
        (
            "FastAPI, after Loanwatch's routes added as plain routes",
            with_routers(lambda app, router: app.router.routes.extend(router.routes)),
        ),
        (
            "FastAPI, after Loanwatch's routers included (include_router)",
            with_routers(lambda app, router: app.include_router(router)),
        ),
        ("Loanwatch's app as built, the route first", loanwatch(route_first=True)),
        ("Loanwatch's app as built, the route last", loanwatch(route_first=False)),
    ]
    print(f"| a trivial GET served by | CPU per request (us), {requests:,} requests |")
    print("| --- | ---: |")
    for name, app in cases:
        print(f"| {name} | {await cpu_per_request(app, requests):.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().requests))
