"""The OpenAPI document says what the API really does: how to authenticate, the
Idempotency-Key, and errors as problem+json (tests/test_embedded.py holds live responses to it
with Schemathesis)."""

import importlib
import json
import pkgutil
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx

import app
from app.errors import LoanwatchError
from app.events.types import EVENT_TYPES
from app.money import MINOR_DIGITS
from app.webhooks.dispatcher import payload as payload_bytes
from app.webhooks.schemas import WebhookPayload
from tests.factories import world

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in methods.items()
    ]


async def test_every_operation_documents_its_key_and_problem_errors(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer <key>`",
    }  # fmt: skip
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert set(document["components"]["schemas"]["Problem"]["required"]) == {
        "type", "title", "status", "detail", "code",
    }  # fmt: skip
    for path, method, operation in operations(document):
        where = f"{method.upper()} {path}"
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        assert {"401", "422", "503"} <= set(errors), where
        assert all(r["content"] == PROBLEM for r in errors.values()), where
        if path.startswith("/v1/inbound/"):
            # Signed: an API key is optional, and the webhook-id is the idempotency key.
            assert operation["security"] == [{}, {"apiKey": []}], where
            headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
            assert "webhook-id" in headers, where
            assert "Idempotency-Key" not in headers, where
            continue
        assert operation["security"] == [{"apiKey": []}], where
        assert "403" in errors, where
        if method == "post":
            headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
            assert "Idempotency-Key" in headers, where
            successes = [r for s, r in operation["responses"].items() if s[0] == "2"]
            assert all("Idempotent-Replayed" in r["headers"] for r in successes), where


async def test_only_operations_naming_an_object_document_404(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "404" in paths["/v1/loans/{loan_id}"]["get"]["responses"]
    assert "404" in paths["/v1/loans"]["get"]["responses"]  # ?borrower_id=
    assert "404" in paths["/v1/loans"]["post"]["responses"]  # borrower_id, product_code
    assert "404" not in paths["/v1/merchants"]["get"]["responses"]
    assert "404" not in paths["/v1/merchants"]["post"]["responses"]
    assert "409" in paths["/v1/loans"]["post"]["responses"]
    assert "409" not in paths["/v1/loans"]["get"]["responses"]


async def test_the_gateway_notification_documents_its_signed_body(
    client: httpx.AsyncClient,
) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/v1/inbound/gateways/{name}"][
        "post"
    ]
    headers = {p["name"]: p["required"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id": True, "webhook-timestamp": True, "webhook-signature": True}
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["type", "timestamp", "data"]
    assert schema["properties"]["type"]["enum"] == [
        "debit.succeeded", "debit.failed", "payment.charged_back",
    ]  # fmt: skip
    assert "loan_id" in schema["properties"]["data"]["properties"]
    assert "$ref" not in str(schema)  # written in place: nothing outside it to resolve
    # Read as JSON whatever its Content-Type: only an encoded body is a 415 (a tester's: the
    # document said a body declared as something else was).
    assert operation["responses"]["415"]["description"].startswith("The body is encoded")


async def test_errors_have_the_documented_shape(client: httpx.AsyncClient) -> None:
    w = await world(client)
    document = (await client.get("/openapi.json")).json()
    documented = set(document["components"]["schemas"]["Problem"]["properties"])
    answers = [
        await client.get("/v1/loans/loan_missing", headers=w.merchant),
        await client.get("/v1/loans"),
        await client.post("/v1/merchants", json={"name": "x"}, headers=w.merchant),
        await w.post("/v1/loans", {"borrower_id": "bor_x", "principal": 12}),
    ]
    assert [a.status_code for a in answers] == [404, 401, 403, 422]
    for answer in answers:
        assert answer.headers["content-type"] == "application/problem+json"
        body = answer.json()
        assert {"type", "title", "status", "detail", "code"} <= set(body) <= documented
        assert body["status"] == answer.status_code
    assert answers[0].json()["title"] == "Loan not found"


def test_each_problem_code_has_a_title_of_its_own() -> None:
    """RFC 9457's title summarises the problem type: seventeen 409s said only "Conflict", and
    the 404s "Not found" (a tester's)."""
    for module in pkgutil.walk_packages(app.__path__, "app."):
        importlib.import_module(module.name)

    def kinds(of: type[LoanwatchError]) -> Iterator[type[LoanwatchError]]:
        for kind in of.__subclasses__():
            yield kind
            yield from kinds(kind)

    titles = {kind.code: kind.title for kind in kinds(LoanwatchError)}
    assert len(titles) > 50
    assert len(set(titles.values())) == len(titles), titles
    assert titles["close_date_in_past"] == "Close date in the past"


async def test_polled_reads_document_their_body_and_304(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    polled = ["/v1/loans", "/v1/risk/flags", "/v1/loans/{loan_id}", "/v1/loans/{loan_id}/schedule",
              "/v1/loans/{loan_id}/risk",
              "/v1/borrowers/{borrower_id}", "/v1/events", "/v1/business-date",
              "/v1/close-runs/{as_of}", "/v1/borrowers", "/v1/borrowers/{borrower_id}/loans",
              "/v1/risk/runs/{run_id}",
              "/v1/webhook-endpoints/{endpoint_id}/deliveries",
              # the configuration reads
              "/v1/products", "/v1/products/{code}", "/v1/merchants", "/v1/gateways",
              "/v1/webhook-endpoints", "/v1/webhook-endpoints/{endpoint_id}", "/v1/risk/rules",
              *(f"/v1/portfolio/{view}" for view in
                ("summary", "roll-rates", "vintages", "segments", "alerts"))]  # fmt: skip
    for path in polled:
        operation = document["paths"][path]["get"]
        responses = operation["responses"]
        assert "304" in responses, path
        assert "$ref" in responses["200"]["content"]["application/json"]["schema"], path
        # How to ask: the tag the 200 sends, and the header that sends it back.
        assert "ETag" in responses["200"]["headers"], path
        assert "If-None-Match" in {p["name"] for p in operation["parameters"]}, path
    schemas = document["components"]["schemas"]
    assert set(schemas["DelinquencyRates"]["properties"]) == {"30_plus", "90_plus"}
    # Bounds in JSON Schema's words: "ge" and "le" reached the document for every list's
    # limit, which no validator or generator reads (a re-verifier's).
    text = json.dumps(document)
    assert '"ge":' not in text
    assert '"le":' not in text
    (limit,) = [p for p in document["paths"]["/v1/loans"]["get"]["parameters"]
                if p["name"] == "limit"]  # fmt: skip
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 200)
    assert schemas["LoanRiskRead"]["properties"]["grade"]["enum"] == list("ABCDE")
    assert set(schemas["RollRatesRead"]["properties"]) == {"from", "to", "currency", "matrix"}


async def test_a_405_allows_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    w = await world(client)
    document = (await client.get("/openapi.json")).json()
    for path, concrete in (("/v1/loans", "/v1/loans"),
                           ("/v1/borrowers/{borrower_id}", "/v1/borrowers/bor_x")):  # fmt: skip
        answer = await client.request("PUT", concrete, headers=w.admin)
        assert answer.status_code == 405
        assert answer.json()["code"] == "method_not_allowed"
        documented = {method.upper() for method in document["paths"][path]}
        assert set(answer.headers["allow"].split(", ")) == documented | {"HEAD"}


async def test_the_document_describes_what_subscribers_receive(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["webhooks"]["event"]["post"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WebhookPayload"}
    payload = document["components"]["schemas"]["WebhookPayload"]
    assert payload["properties"]["type"]["enum"] == list(EVENT_TYPES)
    # The dispatcher's bytes are an instance of the documented body.
    sent = payload_bytes("risk.flag_raised", datetime(2026, 12, 3, tzinfo=UTC), {"x": 1}, 9)
    received = WebhookPayload.model_validate_json(sent)
    assert set(json.loads(sent)) == set(payload["required"]) == {"type", "timestamp", "data"}
    assert received.data == {"x": 1, "sequence": 9}


async def test_the_rules_put_documents_both_bodies_it_takes(client: httpx.AsyncClient) -> None:
    """GET's answer changed (version and rules), or the thresholds alone (docs/risk.md): a
    bare ``{}`` puts the defaults, so the document must describe it too."""
    document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/v1/risk/rules"]["put"]["requestBody"]["content"]
    update = document["components"]["schemas"][body["application/json"]["schema"]["$ref"][21:]]
    wrapped, bare = update["anyOf"]
    assert (wrapped["required"], wrapped["additionalProperties"]) == (["rules"], False)
    assert bare == wrapped["properties"]["rules"]
    thresholds = document["components"]["schemas"][bare["$ref"][21:]]
    assert "required" not in thresholds  # every threshold has its default
    # A ratio is a decimal string: a number, which a Decimal's schema offers, is refused.
    ratio = thresholds["properties"]["partial_payment_ratio"]
    assert (ratio["type"], "anyOf" in ratio) == ("string", False)
    w = await world(client)
    answer = await client.put("/v1/risk/rules", json={}, headers=w.admin)
    assert answer.status_code == 200, answer.text


async def test_a_patch_offers_null_only_where_it_takes_it(client: httpx.AsyncClient) -> None:
    """A webhook endpoint's url, event_types and enabled refuse null (left out, each is kept);
    the document offered it, so a schema-valid request was refused (a tester's)."""
    document = (await client.get("/openapi.json")).json()
    fields = document["components"]["schemas"]["EndpointUpdate"]["properties"]

    def nullable(field: dict[str, Any]) -> bool:
        return {"type": "null"} in field.get("anyOf", [])

    assert [name for name in fields if nullable(fields[name])] == ["description"]
    assert (fields["event_types"]["minItems"], fields["event_types"]["maxItems"]) == (1, 50)


async def test_a_fee_s_kind_states_the_fields_it_requires(client: httpx.AsyncClient) -> None:
    """A percent late fee without its cap is refused; the document showed every fee field
    optional (a tester's). Each kind's requirement is a JSON Schema if/then."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    product = schemas["ProductCreate"]["properties"]

    def required_by_kind(fee: str) -> dict[str, list[str]]:
        name = product[fee]["anyOf"][0]["$ref"].rsplit("/", 1)[1]
        return {rule["if"]["properties"]["kind"]["const"]: rule["then"]["required"]
                for rule in schemas[name]["allOf"]}  # fmt: skip

    assert required_by_kind("late_fee") == {
        "fixed": ["amount"], "percent": ["percent", "cap_per_installment"],
    }  # fmt: skip
    assert required_by_kind("origination_fee") == {"fixed": ["amount"], "percent": ["percent"]}


async def test_every_currency_field_lists_the_currencies_the_service_knows(
    client: httpx.AsyncClient,
) -> None:
    """A valid ISO 4217 code outside them is refused: a client could not tell which ones
    beforehand (a tester's)."""
    document = (await client.get("/openapi.json")).json()
    schemas = [
        *(schema["properties"]["currency"] for schema in document["components"]["schemas"].values()
          if "currency" in schema.get("properties", {}) and schema["title"].endswith(
              ("Create", "Notification"))),
        *(parameter["schema"] for _, _, operation in operations(document)
          for parameter in operation.get("parameters", []) if parameter["name"] == "currency"),
    ]  # fmt: skip
    assert len(schemas) >= 7
    for schema in schemas:
        (text,) = [branch for branch in schema["anyOf"] if branch["type"] == "string"]
        assert text["enum"] == sorted(MINOR_DIGITS), schema
