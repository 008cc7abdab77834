"""The app adds its routers' routes as plain routes, in the order of their traffic
(app/main.py): that must neither change the OpenAPI document nor which route answers. HEAD
is answered by the GET route."""

import re

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.main import ROUTERS, app
from tests.factories import world


def test_no_two_routes_answer_the_same_path_and_method() -> None:
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    # Besides the routers' routes, the app has only its documentation pages (/docs, /redoc).
    assert all(route in routes for router in ROUTERS for route in router.routes)
    for route in routes:
        # Parameters as a word no static segment uses: a route that matched it as well could
        # shadow this one, or be shadowed by it, depending on the order.
        concrete = re.sub(r"\{[^}]+\}", "x1", route.path)
        shadowing = [
            (other.path, sorted(other.methods & route.methods))
            for other in routes
            if other is not route
            and other.methods & route.methods
            and other.path_regex.match(concrete)
        ]
        assert not shadowing, f"{route.path} is also matched by {shadowing}"


def test_the_document_is_the_one_include_router_would_give() -> None:
    included = FastAPI(title=app.title, version=app.version, description=app.description)
    for router in ROUTERS:
        included.include_router(router)
    ours = app.openapi()
    theirs = included.openapi()
    assert ours["paths"].keys() == theirs["paths"].keys()
    for path, methods in theirs["paths"].items():
        for method, operation in methods.items():
            mine = ours["paths"][path][method]
            # What app/api/openapi.py adds on top (security, headers, problem responses)
            # aside, FastAPI describes each operation the same way.
            assert mine["tags"] == operation["tags"], (path, method)
            assert mine["operationId"] == operation["operationId"], (path, method)
            assert mine.get("requestBody") == operation.get("requestBody"), (path, method)
            assert mine["responses"].keys() >= operation["responses"].keys() - {"422"}
            assert mine.get("parameters", [])[: len(operation.get("parameters", []))] == (
                operation.get("parameters", [])
            ), (path, method)


async def test_head_answers_as_get_without_the_body(client: httpx.AsyncClient) -> None:
    w = await world(client)
    got = await client.get("/v1/portfolio/summary", headers=w.admin)
    head = await client.head("/v1/portfolio/summary", headers=w.admin)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == got.headers["etag"]
    assert head.headers["content-length"] == str(len(got.content))
    cached = {**w.admin, "If-None-Match": got.headers["etag"]}
    assert (await client.head("/v1/portfolio/summary", headers=cached)).status_code == 304
    assert (await client.head("/v1/portfolio/summary")).status_code == 401


async def test_a_detail_writes_control_and_format_characters_as_escapes(
    client: httpx.AsyncClient,
) -> None:
    """A 404 repeats the id the request named: a right-to-left override in it turned the
    detail around in a console showing it (a tester's)."""
    w = await world(client)
    for path, shown in (("/v1/loans/x%E2%80%AEy", "x\\u202ey"),
                        ("/v1/borrowers/a%E2%80%8Bb", "a\\u200bb")):  # fmt: skip
        answer = await client.get(path, headers=w.admin)
        assert answer.status_code == 404, answer.text
        assert shown in answer.json()["detail"], answer.json()["detail"]
        assert answer.json()["detail"].isprintable()
    plain = await client.get("/v1/loans/loan_42", headers=w.admin)
    assert plain.json()["detail"] == "loan loan_42 does not exist"
    # A space of any kind is text (U+3000 comes with Chinese input); a field named in errors
    # is escaped as the message is (a re-verifier's).
    spaced = await client.get("/v1/loans/a%E3%80%80b", headers=w.admin)
    assert spaced.json()["detail"] == "loan a\u3000b does not exist"
    named = await client.get("/v1/loans?%E2%80%AE=1", headers=w.admin)
    assert named.json()["errors"][0]["field"] == "\\u202e"
