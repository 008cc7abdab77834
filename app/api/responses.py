"""Responses the busiest and the polled routes render themselves."""

import hashlib
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

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


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON, the bytes FastAPI sends for a ``response_model``: a route that returns
    the model instead has FastAPI validate it once more against that model before dumping it
    (about a tenth of GET /v1/loans/{id}'s CPU, bench/http_load.py). The route keeps its
    ``response_model`` for the OpenAPI document."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


def cached(request: Request, body: BaseModel, cache_control: str = LIVE) -> Response:
    """The body with a strong ETag of its bytes, 304 when the client already has them: what
    SPEC.md asks of the reads dashboards poll. The 304 saves the transfer and the client's
    parsing, not the query."""
    return etagged(request.headers.getlist("if-none-match"), body, cache_control)


def etagged(if_none_match: list[str], body: BaseModel, cache_control: str = LIVE) -> Response:
    """``cached``, given the request's If-None-Match field lines."""
    payload = body.model_dump_json().encode()
    etag = f'"{hashlib.sha256(payload).hexdigest()[:32]}"'
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
