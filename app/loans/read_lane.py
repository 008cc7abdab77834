"""GET /v1/loans/{loan_id} answered ahead of the framework, when the request is plain.

Dashboards poll this read, and the framework around it (six middlewares, the route match,
FastAPI's dependency solving, Starlette's request objects) was over half its CPU
(bench/http_load.py). This lane answers the request that needs none of that: a GET with no
query, no body and no repeated header, from a key this process already knows, for a loan the
key may see. It runs the route's own read and renders the route's own bytes. Every other
request, and every refusal, goes down the whole stack unchanged, which answers it as before:
so no check is written twice, and the lane can only be as right as the route."""

import re
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.auth import bearer_key_hash, principals
from app.api.responses import etagged
from app.api.unambiguous import SINGLE_VALUED_HEADERS
from app.errors import LoanwatchError, database_trouble
from app.loans import service
from app.loans.schemas import loan_read
from app.ops.metrics import observe_request

ROUTE = "/v1/loans/{loan_id}"
_PATH = re.compile(r"/v1/loans/([^/]+)")
# A body's framing: the middlewares look at a body a GET sends, so the lane leaves it to them.
_BODY_FRAMING = {b"content-length", b"transfer-encoding"}


class LoanReadLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["query_string"]
            or "\x00" in scope["path"]
            or (match := _PATH.fullmatch(scope["path"])) is None
            or not await self._answered(scope, receive, send, match.group(1))
        ):
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, receive: Receive, send: Send, loan_id: str) -> bool:
        started = time.perf_counter()
        single: dict[bytes, bytes] = {}
        if_none_match: list[str] = []
        for name, value in scope["headers"]:
            if name in _BODY_FRAMING or name in single:
                return False
            if name in SINGLE_VALUED_HEADERS:
                single[name] = value
            elif name == b"if-none-match":
                if_none_match.append(value.decode("latin-1"))
        key_hash = bearer_key_hash(single.get(b"authorization", b"").decode("latin-1"))
        principal = principals.get(key_hash) if key_hash is not None else None
        if principal is None:
            return False
        response: Response
        try:
            view = await service.read_loan(principal, loan_id=loan_id)
            response = etagged(if_none_match, loan_read(view))
        except LoanwatchError:  # a refusal (404, 403): the stack answers it, as it would have
            return False
        except Exception as exc:
            # Answered here, as the stack would: run again, a read that waited out the pool's
            # timeout for a connection would wait it out twice.
            trouble = database_trouble(Request(scope), exc)
            if trouble is None:
                return False
            response = trouble
        await response(scope, receive, send)
        observe_request("GET", ROUTE, response.status_code, time.perf_counter() - started)
        return True
