"""Responses the busiest and the polled routes render themselves."""

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from app.api.idempotency import record_created
from app.errors import PreconditionFailed

V = TypeVar("V")

# Polled reads move with every write: revalidate each poll.
LIVE = "private, no-cache"
# For the OpenAPI document of a route answering with ``cached``.
POLLED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the `If-None-Match` ETag is still current"}
}
# For the OpenAPI document of a route whose 201 names the object created, as RFC 9110 asks.
LOCATION = {"Location": {"description": "The path of the object created (GET it there)",
                         "schema": {"type": "string"}}}  # fmt: skip
CREATED: dict[int | str, dict[str, Any]] = {201: {"headers": LOCATION}}


def locate(response: Response, path: str) -> None:
    """Name the object created in the 201's ``Location`` (RFC 9110), and in the request's
    Idempotency-Key record as its transaction commits: a retry told the answer was lost is
    told where the object is."""
    response.headers["Location"] = path
    record_created(path)


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON, the bytes FastAPI sends for a ``response_model``: a route that returns
    the model instead has FastAPI validate it once more against that model before dumping it
    (about a tenth of GET /v1/loans/{id}'s CPU, bench/http_load.py). The route keeps its
    ``response_model`` for the OpenAPI document."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


# For the OpenAPI document of a write that honours ``If-Match`` (``precondition``).
PRECONDITION: dict[int | str, dict[str, Any]] = {
    412: {"description": "The `If-Match` ETag is no longer current (`precondition_failed`)"}
}


def _tag(payload: bytes) -> str:
    return f'"{hashlib.sha256(payload).hexdigest()[:32]}"'


def precondition(request: Request, render: Callable[[V], BaseModel]) -> Callable[[V], None] | None:
    """The check of the request's ``If-Match`` (RFC 9110, section 13.1.1), for the service to
    run on the object it has locked, before it changes it: 412 unless the object as ``render``
    shows it (its GET) has one of the tags; None when the request asks nothing. Ignored, a
    limit two admins set at once went to whichever came last, though each sent the tag it had
    read (a tester's)."""
    fields = request.headers.getlist("if-match")
    tags = [tag.strip() for tag in ",".join(fields).split(",") if tag.strip()]
    # "*": any current representation, which the object found is. An empty field matches
    # nothing: sent from an unset variable, it let the write through unchecked (a
    # re-verifier's).
    if not fields or tags == ["*"]:
        return None

    def check(current: V) -> None:
        # A weak tag never matches: If-Match compares strongly.
        etag = _tag(render(current).model_dump_json().encode())
        if etag not in tags:
            raise PreconditionFailed(
                f"If-Match {', '.join(tags) or '(empty)'} is not the current ETag {etag}: "
                "read it again"
            )

    return check


def cached(request: Request, body: BaseModel, cache_control: str = LIVE) -> Response:
    """The body with a strong ETag of its bytes, 304 when the client already has them: what
    SPEC.md asks of the reads dashboards poll. The 304 saves the transfer and the client's
    parsing, not the query."""
    return etagged(request.headers.getlist("if-none-match"), body, cache_control)


def etagged(if_none_match: list[str], body: BaseModel, cache_control: str = LIVE) -> Response:
    """``cached``, given the request's If-None-Match field lines."""
    payload = body.model_dump_json().encode()
    etag = _tag(payload)
    # The body depends on the caller's key (a merchant sees its own): a browser switching
    # keys must not reuse the other key's copy, even while it is fresh.
    headers = {"ETag": etag, "Cache-Control": cache_control, "Vary": "Authorization"}
    # A list header: several field lines are one list (RFC 9110, section 5.3).
    asked = ",".join(if_none_match)
    tags = [tag.strip() for tag in asked.split(",")]
    # "*" is the whole field or nothing (RFC 9110, section 13.1.2); "W/*" is no tag.
    if tags == ["*"] or etag in {tag.removeprefix("W/") for tag in tags}:
        return Response(status_code=304, headers=headers)
    return Response(payload, media_type="application/json", headers=headers)
