"""HEAD answered as GET without its body (RFC 9110, 9.3.2): uptime monitors and HTTP caches
send it to the reads dashboards poll, and expect the same status, ETag and length."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AnswerHeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
