"""The API's documentation pages are not to be framed by another site: Swagger UI takes an API
key in its Authorize dialog, and any site could frame it (a re-verifier's), as it could the
dashboard before it sent its own headers (app/portfolio/routes.py)."""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCUMENTATION_PAGES = ("/docs", "/redoc")


class NoFramingOfDocumentation:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(DOCUMENTATION_PAGES):
            await self.app(scope, receive, send)
            return

        async def not_framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Frame-Options"] = "DENY"
                headers["Content-Security-Policy"] = "frame-ancestors 'none'"
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, not_framed)
