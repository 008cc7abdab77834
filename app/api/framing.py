"""The API's documentation pages are not to be framed by another site: Swagger UI takes an API
key in its Authorize dialog, and any site could frame it (a re-verifier's), as it could the
dashboard before it sent its own headers (app/portfolio/routes.py). Only those routes are
wrapped: no other request passes through this."""

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCUMENTATION_PAGES = ("/docs", "/redoc")


def not_framed(app: FastAPI) -> None:
    for route in app.router.routes:
        if isinstance(route, Route) and route.path in DOCUMENTATION_PAGES:
            route.app = _with_headers(route.app)


def _with_headers(page: ASGIApp) -> ASGIApp:
    async def framed_nowhere(scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Frame-Options"] = "DENY"
                headers["Content-Security-Policy"] = "frame-ancestors 'none'"
            await send(message)

        await page(scope, receive, with_headers)

    return framed_nowhere
