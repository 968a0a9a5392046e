"""The input boundary against the real app: hostile input is a 4xx naming the field.

Each input class here used to be a 500; now it is a problem+json naming the field, and
nothing is written.

Every case here was a 5xx on the code before the boundary (NUL bytes reaching asyncpg,
msgspec's RecursionError, UnicodeDecodeError, class guards on OPTIONS).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.tenancy.scope import Role
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant
from tests.edge.multipart import raw_multipart

Client = AsyncTestClient[Litestar]
ALL_ROLES = (Role.CHAT, Role.SEARCH, Role.INGEST, Role.ADMIN)
PROBLEM = "application/problem+json"


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture
async def tenant(make_tenant: TenantFactory, app: Litestar, client: Client) -> str:
    tenant_id = await make_tenant("edge")
    await wait_for_tenant(app, tenant_id)
    return tenant_id


@pytest.fixture
def headers(tenant: str, auth: AuthHeaders) -> dict[str, str]:
    return auth(tenant, roles=ALL_ROLES)


def assert_problem(response: Any, status: int, code: str, key: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    if key is not None:
        assert key in [e["key"] for e in body.get("errors", [])], body
        assert key in body["detail"], body
    return body


NUL_CASES = [
    # (method, url, request kwargs, field named)
    ("GET", "/v1/documents", {"params": {"cursor": "AA"}}, "cursor"),
    (
        "GET",
        "/v1/documents",
        {"params": {"cursor": base64.urlsafe_b64encode(b"a\0b").decode()}},
        "cursor",
    ),
    ("GET", "/v1/documents", {"params": {"cursor": "a\0b"}}, "cursor"),
    ("DELETE", "/v1/documents/x%00", {}, "document_id"),
    ("GET", "/v1/admin/usage", {"params": {"user": "a\0"}}, "user"),
    ("GET", "/v1/admin/usage", {"params": {"provider": "a\0"}}, "provider"),
    ("GET", "/v1/admin/usage", {"params": {"model": "a\0"}}, "model"),
    ("DELETE", "/v1/admin/api-keys/k%00", {}, "key_id"),
    ("POST", "/v1/admin/api-keys/k%00/rotate", {"json": {}}, "key_id"),
    ("GET", "/v1/admin/users/u%00/export", {}, "user_id"),
    ("DELETE", "/v1/admin/users/u%00/data", {}, "user_id"),
    (
        "POST",
        "/v1/documents",
        {"json": {"documents": [{"title": "t", "text": "x", "acl": {"groups": ["g\0"]}}]}},
        "documents[0].acl.groups[0]",
    ),
    (
        "POST",
        "/v1/documents",
        {"json": {"documents": [{"title": "t", "text": "x", "metadata": {"k\0": "v"}}]}},
        "documents[0].metadata.k?",
    ),
    ("POST", "/v1/search", {"json": {"query": "a\0b"}}, "query"),
    ("POST", "/v1/search", {"json": {"query": "q", "filter": {"k": "a\0"}}}, "filter.k"),
    ("POST", "/v1/chat", {"json": {"message": "a\0b"}}, "message"),
    ("POST", "/v1/admin/api-keys", {"json": {"name": "n\0", "scopes": ["chat"]}}, "name"),
]


@pytest.mark.parametrize(("method", "url", "kwargs", "key"), NUL_CASES)
async def test_nul_anywhere_is_a_422_naming_the_field(
    client: Client,
    headers: dict[str, str],
    method: str,
    url: str,
    kwargs: dict[str, Any],
    key: str,
) -> None:
    response = await client.request(method, url, headers=headers, **kwargs)
    # The cursor is opaque: its decoded NUL is refused by the service, which names it too.
    assert_problem(response, 422, "validation_error", key if key != "cursor" else None)
    assert "cursor" in response.text if key == "cursor" else True


DEEP_CASES = [
    ("/v1/search", lambda d: {"query": "q", "filter": {"k": d}}),
    ("/v1/chat", lambda d: {"message": "q", "filter": {"k": d}}),
    ("/v1/documents", lambda d: {"documents": [{"title": "t", "text": "x", "metadata": {"k": d}}]}),
    ("/v1/chat/completions", lambda d: {"model": "auto", "messages": d}),
    ("/v1/admin/api-keys", lambda d: {"name": "n", "scopes": d}),
]


@pytest.mark.parametrize(("url", "make"), DEEP_CASES)
@pytest.mark.parametrize("levels", [40, 1_500, 10_000])
async def test_deep_nesting_is_a_400_at_any_depth(
    client: Client, headers: dict[str, str], url: str, make: Any, levels: int
) -> None:
    marker = '"__DEEP__"'
    body = json.dumps(make("__DEEP__")).replace(marker, deep_json(levels))
    response = await client.post(
        url, content=body.encode(), headers={**headers, "content-type": "application/json"}
    )
    problem = assert_problem(response, 400, "malformed_request")
    assert "nested deeper than 32 levels" in problem["detail"]


async def test_nesting_within_the_bound_still_reaches_the_handler(
    client: Client, headers: dict[str, str]
) -> None:
    """31 levels of filter value: decoded and handed on; the filter grammar refuses it."""
    response = await client.post(
        "/v1/search", json={"query": "q", "filter": {"k": deep(29)}}, headers=headers
    )
    assert_problem(response, 422, "validation_error", "filter.k")


INVALID_UTF8_CASES = [
    ("/v1/documents", b'{"documents": [{"title": "t", "text": "a\xff b"}]}'),
    ("/v1/documents", b'{"documents": [{"title": "t", "text": "x", "metadata": {"k\xc3": 1}}]}'),
    ("/v1/search", b'{"query": "\xed\xa0\x80"}'),
    ("/v1/chat", b'{"message": "caf\xe9"}'),
]


@pytest.mark.parametrize(("url", "body"), INVALID_UTF8_CASES)
async def test_invalid_utf8_in_json_is_a_400(
    client: Client, headers: dict[str, str], url: str, body: bytes
) -> None:
    response = await client.post(
        url, content=body, headers={**headers, "content-type": "application/json"}
    )
    problem = assert_problem(response, 400, "malformed_request", "body")
    assert "not UTF-8" in problem["detail"]


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/documents", b'{"documents": [{"title": "\\ud800", "text": "x"}]}'),
        ("/v1/search", b'{"query": "\\udc00 tail"}'),
        ("/v1/chat", b'{"message": "\\ud83d"}'),
    ],
)
async def test_lone_surrogates_are_a_400_on_every_endpoint(
    client: Client, headers: dict[str, str], url: str, body: bytes
) -> None:
    response = await client.post(
        url, content=body, headers={**headers, "content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_request", "body")


async def test_invalid_utf8_percent_escapes_are_a_400(
    client: Client, headers: dict[str, str]
) -> None:
    assert_problem(
        await client.delete("/v1/documents/%FF%FE", headers=headers), 400, "malformed_request"
    )
    response = await client.get("/v1/admin/usage?user=%C3", headers=headers)
    assert_problem(response, 400, "malformed_request", "user")


@pytest.mark.parametrize(
    "path", ["/v1/conversations", "/v1/admin/api-keys", "/v1/admin/users/u/export", "/v1/chat"]
)
async def test_options_without_a_token_is_204_with_allow(client: Client, path: str) -> None:
    response = await client.options(path)
    assert response.status_code == 204, response.text
    assert "OPTIONS" in response.headers["allow"]
    # And no CORS headers: CORS is off unless origins are configured.
    assert "access-control-allow-origin" not in response.headers


async def test_allowed_cidrs_and_scopes_are_bounded(
    client: Client, headers: dict[str, str], owner_pool: asyncpg.Pool, tenant: str
) -> None:
    cidrs = [f"10.{i // 256}.{i % 256}.0/24" for i in range(10_000)]
    response = await client.post(
        "/v1/admin/api-keys",
        json={"name": "n", "scopes": ["chat"], "allowed_cidrs": cidrs},
        headers=headers,
    )
    assert_problem(response, 422, "validation_error", "allowed_cidrs")
    response = await client.post(
        "/v1/admin/api-keys", json={"name": "n", "scopes": ["chat"] * 1_000}, headers=headers
    )
    assert_problem(response, 422, "validation_error", "scopes")
    count = await owner_pool.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = $1", tenant)
    assert count == 0


async def test_long_multipart_filename_is_a_422_naming_it_not_a_413(
    client: Client, headers: dict[str, str]
) -> None:
    for length in (300, 10_000):
        files = [("file", ("n" * length + ".txt", b"words", "text/plain"))]
        response = await client.post("/v1/documents", files=files, headers=headers)
        problem = assert_problem(response, 422, "validation_error", "files[0].filename")
        assert "20971520" not in problem["detail"]


async def test_nul_in_multipart_names_and_fields_is_a_422_naming_the_part(
    client: Client, headers: dict[str, str]
) -> None:
    for params, key in [
        (b'name="file"; filename="a\x00b.txt"', "files[0].filename"),
        (b'name="fi\x00le"; filename="a.txt"', "files[0].name"),
    ]:
        body, content_type = raw_multipart([(params, b"words")])
        response = await client.post(
            "/v1/documents", content=body, headers={**headers, "content-type": content_type}
        )
        assert_problem(response, 422, "validation_error", key)
    body, content_type = raw_multipart([(b'name="file"; filename="a\xffb.txt"', b"words")])
    response = await client.post(
        "/v1/documents", content=body, headers={**headers, "content-type": content_type}
    )
    assert_problem(response, 400, "malformed_request", "files[0]")
    files = [("file", ("a.txt", b"words", "text/plain"))]
    response = await client.post(
        "/v1/documents", files=files, data={"title": "a\0b"}, headers=headers
    )
    assert_problem(response, 422, "validation_error", "title[0]")
    response = await client.post(
        "/v1/documents",
        files=files,
        data={"metadata": '{"k": ' + deep_json(5_000) + "}"},
        headers=headers,
    )
    assert_problem(response, 422, "validation_error", "files[0].metadata")


async def test_unknown_fields_are_named_in_detail_without_internal_names(
    client: Client, headers: dict[str, str]
) -> None:
    response = await client.post("/v1/search", json={"query": "q", "bogus": 1}, headers=headers)
    body = assert_problem(response, 422, "validation_error", "bogus")
    assert body["errors"][0]["source"] == "body"
    response = await client.get("/v1/documents?limit=abc", headers=headers)
    body = assert_problem(response, 422, "validation_error", "limit")
    assert body["errors"][0]["source"] == "query"
    assert "ParamType" not in response.text
    response = await client.post(
        "/v1/documents",
        json={"documents": [{"title": "t", "text": "x", "extra": 1}]},
        headers=headers,
    )
    assert_problem(response, 422, "validation_error", "documents[0].extra")


async def test_nothing_is_written_by_a_refused_ingest(
    client: Client, headers: dict[str, str], owner_pool: asyncpg.Pool, tenant: str
) -> None:
    documents = [
        {"id": "fine", "title": "t", "text": "words"},
        {"id": "bad", "title": "t", "text": "x", "metadata": {"k": deep(100)}},
    ]
    response = await client.post("/v1/documents", json={"documents": documents}, headers=headers)
    assert_problem(response, 400, "malformed_request", "documents[1].metadata.k" + "[0]" * 28)
    count = await owner_pool.fetchval("SELECT count(*) FROM documents WHERE tenant_id = $1", tenant)
    assert count == 0


@pytest.mark.parametrize("url", ["/v1/admin/api-keys", "/v1/search", "/v1/chat"])
async def test_an_empty_body_is_refused_not_waited_for(
    client: Client, headers: dict[str, str], url: str
) -> None:
    """Found by the fuzzer: an empty body was read by the boundary and never handed on.

    The handler then waited for a body until the client gave up.
    """
    response = await client.post(url, content=b"", headers=headers)
    body = assert_problem(response, 422, "validation_error", "body")
    assert "a JSON body is required" in body["detail"]
