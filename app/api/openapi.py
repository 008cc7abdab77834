"""The OpenAPI document: FastAPI's, plus what it cannot see in the route signatures. The
principal dependencies read the `Authorization` header themselves and the idempotency and NUL
layers are middleware, so without this the document would offer no way to authenticate in
`/docs`, say nothing of `Idempotency-Key`, and describe errors as FastAPI's
`application/json` validation list instead of the problem+json every error really is."""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from app.api.idempotency import MAX_KEY_LENGTH

API_KEY = "apiKey"
# Signed with the gateway's secret instead of an API key (docs/webhooks.md).
SIGNATURE_AUTHENTICATED = ("/v1/inbound/",)


class FieldError(BaseModel):
    field: str = Field(description="The body field (`late_fee.amount`), query parameter or header")
    message: str
    type: str | None = Field(default=None, description="The kind of violation, when known")


class Problem(BaseModel):
    """RFC 9457 problem details with a machine-readable `code`."""

    type: str = Field(examples=["https://loanwatch.dev/problems/credit_limit_exceeded"])
    title: str
    status: int
    detail: str
    code: str = Field(examples=["credit_limit_exceeded"])
    errors: list[FieldError] | None = Field(
        default=None, description="Each invalid field, on validation errors"
    )
    location: str | None = Field(
        default=None,
        description="`idempotency_answer_lost`: the path of what the request created, when "
        "it created something (GET it there)",
    )


ERRORS = {
    "401": "No API key, or not a valid one (`unauthorized`); for a gateway, a bad signature",
    "403": "The key's role may not do this (`forbidden`)",
    "404": "No such object, or one of another merchant (`not_found` or a more precise code)",
    "409": "The object's state does not allow it (e.g. `loan_not_active`), or a request with "
    "the same `Idempotency-Key` is still running (`idempotency_request_in_progress`) or was "
    "applied and its answer lost (`idempotency_answer_lost`)",
    "413": "The body is larger than `LOANWATCH_MAX_BODY_BYTES` (1 MiB; `payload_too_large`)",
    "415": "The body is declared as something other than JSON, or encoded (`Content-Encoding`; "
    "`unsupported_media_type`)",
    "422": "Invalid input; `errors` names each field (`validation_error`, or a domain code "
    "such as `credit_limit_exceeded`, `amount_exceeds_payoff`, `idempotency_key_reused`)",
    "503": "The database is busy (`service_busy`: nothing was stored) or unreachable "
    "(`database_unavailable`), or the service stopped before the request finished "
    "(`service_stopping`); retry after `Retry-After`, with the same `Idempotency-Key`",
}

# A gateway's notification is read as JSON whatever its Content-Type says (a payment must not
# be lost to a header): only an encoded body is refused.
SIGNED_BODY_ENCODED = "The body is encoded (`Content-Encoding`; `unsupported_media_type`)"

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "description": "Scoped to the API key, kept at least 24 h: the same key and body again "
    "replays the stored response (header `Idempotent-Replayed: true`); the same key with "
    "another body is 422 `idempotency_key_reused`; while the first is still running, 409.",
}

# A polled read (one documenting 304): the tag it sends and the header that asks with it.
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The `ETag` of the body you hold: 304 with no body while it is current",
}
# A write that honours it (a 412 documented: app.api.responses.PRECONDITION).
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The `ETag` of the object as you last read it: 412 `precondition_failed`, "
    "nothing changed, when it has changed since",
}
ETAG = {
    "ETag": {
        "description": "A strong tag of this body, for `If-None-Match` on the next poll",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "How long the body stays fresh", "schema": {"type": "string"}},
}

REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response to an earlier request with "
        "the same `Idempotency-Key`",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def install(app: FastAPI) -> None:
    """Have ``app`` serve the completed document (built once, on first request)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # Every 422 is replaced below, so FastAPI's validation shapes are left unreferenced.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs"))
    schemas["Problem"] = problem
    components["securitySchemes"] = {
        API_KEY: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer <key>`",
        }
    }
    for operations in document.get("webhooks", {}).values():
        for operation in operations.values():
            # What a subscriber answers: FastAPI's default 200 and 422 do not apply.
            operation["responses"] = {
                "2XX": {"description": "Received; any other answer or none is retried"}
            }
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        by_api_key = not path.startswith(SIGNATURE_AUTHENTICATED)
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in _errors_of(document, path, method, operation):
                responses[status] = {
                    "description": ERRORS[status]
                    if by_api_key or status != "415"
                    else SIGNED_BODY_ENCODED,
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            if "412" in responses:
                operation.setdefault("parameters", []).append(IF_MATCH)
                responses["200"].setdefault("headers", {}).update(ETAG)
                responses["412"]["content"] = {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }
            if "304" in responses:
                operation.setdefault("parameters", []).append(IF_NONE_MATCH)
                responses["200"].setdefault("headers", {}).update(ETAG)
                responses["304"].setdefault("headers", {}).update(ETAG)
            if not by_api_key:
                # The signature authenticates; an API key beside it is optional (a gateway
                # key's). The webhook-id is the idempotency key: Idempotency-Key is ignored.
                operation["security"] = [{}, {API_KEY: []}]
                continue
            operation["security"] = [{API_KEY: []}]
            if method == "post":
                operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
                for status, response in responses.items():
                    if status.startswith("2"):
                        response.setdefault("headers", {}).update(REPLAYED)
    return document


def _errors_of(
    document: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> list[str]:
    """The error statuses an operation can answer: any may meet a bad key or input and a busy
    database; only one naming an object can miss it, only a write can conflict or carry a body
    too large."""
    # A gateway may send an API key beside its signature, and then one of the gateway role.
    statuses = ["401", "403"]
    if _names_an_object(document, path, operation):
        statuses.append("404")
    if method != "get":
        statuses += ["409", "413", "415"]
    return [*statuses, "422", "503"]


def _names_an_object(document: dict[str, Any], path: str, operation: dict[str, Any]) -> bool:
    if "{" in path:
        return True
    names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = body.get("schema", {})
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    names += schema.get("properties", {})
    return any(name.endswith("_id") or name == "product_code" for name in names)


def required_header(
    name: str, description: str, *, max_length: int | None = None
) -> dict[str, object]:
    """A header parameter for a route's ``openapi_extra`` (the signature headers)."""
    schema: dict[str, object] = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {"name": name, "in": "header", "required": True, "schema": schema,
            "description": description}  # fmt: skip


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its definitions written in place, for a body FastAPI does
    not parse (a route's ``openapi_extra`` cannot add components). Not for recursive models."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    inlined: dict[str, Any] = resolve(schema)
    return inlined
