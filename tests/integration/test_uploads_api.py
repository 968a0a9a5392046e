"""Multipart uploads to `POST /v1/documents` against the real app, Postgres and Qdrant Edge."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.tenancy.scope import Role, TenantScope
from tests.conftest import AuthHeaders
from tests.samples import CORRUPT_PDF, make_pdf

Client = AsyncTestClient[Litestar]
File = tuple[str, tuple[str, bytes, str]]

HTML = b"""<html><head><title>Visitor badges</title></head><body>
<h1>Badges</h1><p>Visitors collect a <b>quokka</b> badge at reception.</p></body></html>"""


def upload(name: str, data: bytes, content_type: str = "application/octet-stream") -> File:
    return ("file", (name, data, content_type))


async def post_files(
    client: Client, headers: dict[str, str], files: list[File], **fields: Any
) -> Any:
    return await client.post("/v1/documents", files=files, data=fields, headers=headers)


async def search(client: Client, headers: dict[str, str], query: str) -> list[dict[str, Any]]:
    response = await client.post("/v1/search", json={"query": query, "top_k": 50}, headers=headers)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


async def listing(client: Client, headers: dict[str, str]) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = (
        await client.get("/v1/documents", params={"limit": "200"}, headers=headers)
    ).json()["documents"]
    return documents


async def stored(app: Litestar, owner_pool: asyncpg.Pool, tenant: str) -> tuple[int, int]:
    """(rows in `documents`, chunks in the vector index) for a tenant, read past the API."""
    rows = await owner_pool.fetchval("SELECT count(*) FROM documents WHERE tenant_id = $1", tenant)
    scope = TenantScope(tenant_id=tenant, subject="test", roles=frozenset({Role.SEARCH}))
    vectors = await app.state.resources.index.count(scope=scope)
    return rows, vectors


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


async def test_each_supported_format_becomes_a_searchable_document(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    files = [
        upload("notes/parking.txt", b"Bicycles go in the narwhal rack.", "text/plain"),
        upload("travel.md", b"# Travel policy\n\nFly economy to the axolotl office.\n"),
        upload("badges.html", HTML),
        upload("Remote Work.pdf", make_pdf([["Remote days need a pangolin form."]], title="WFH")),
    ]
    response = await post_files(client, auth(tenant), files)
    assert response.status_code == 201, response.text
    ids = ["notes:parking.txt", "travel.md", "badges.html", "Remote-Work.pdf"]
    assert response.json() == {"documents": [{"id": i, "chunks": 1} for i in ids]}
    for word, document_id in zip(("narwhal", "axolotl", "quokka", "pangolin"), ids, strict=True):
        assert [h["document_id"] for h in await search(client, auth(tenant), word)] == [document_id]
    titles = {d["id"]: d["title"] for d in await listing(client, auth(tenant))}
    assert titles == {
        "notes:parking.txt": "parking",
        "travel.md": "Travel policy",
        "badges.html": "Visitor badges",
        "Remote-Work.pdf": "WFH",
    }


async def test_ids_titles_metadata_and_acl_from_form_fields(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    files = [upload("a.txt", b"Salary bands for okapi staff."), upload("b.txt", b"Okapi menu.")]
    response = await post_files(
        client,
        auth(tenant, user="carol", groups=("hr",)),
        files,
        id=["salaries", "menu"],
        title=["Salaries", "Menu"],
        metadata=[json.dumps({"dept": "hr"}), json.dumps({"dept": "canteen"})],
        acl=json.dumps({"groups": ["hr"]}),  # once: applies to both files
    )
    assert response.status_code == 201, response.text
    outsider = await search(client, auth(tenant, user="bob"), "okapi")
    insider = await search(client, auth(tenant, user="carol", groups=("hr",)), "okapi")
    assert outsider == []
    assert {(h["document_id"], h["title"], h["metadata"]["dept"]) for h in insider} == {
        ("salaries", "Salaries", "hr"),
        ("menu", "Menu", "canteen"),
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metadata": json.dumps({"tenant_id": "other"})}, "reserved"),
        ({"metadata": json.dumps({"_bulkhead_acl": ["*"]})}, "reserved"),
        ({"metadata": json.dumps({"_BULKHEAD_version": 9})}, "reserved"),
        ({"metadata": json.dumps({"nested": {"a": 1}})}, "invalid value"),
        ({"metadata": "[1, 2]"}, "must be a JSON object"),
        ({"metadata": "{not json"}, "not valid JSON"),
        ({"acl": json.dumps({"groups": []})}, "length >= 1"),
        ({"id": ["only-one"]}, "given 1 times for 2 files"),
        ({"id": ["same", "same"]}, "appears twice"),
        ({"id": ["/bad", "ok"]}, "files[0]"),
    ],
)
async def test_form_fields_get_the_same_validation_as_json(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    app: Litestar,
    owner_pool: asyncpg.Pool,
    fields: dict[str, Any],
    message: str,
) -> None:
    tenant, _ = tenant_pair
    files = [upload("a.txt", b"first file"), upload("b.txt", b"second file")]
    body = assert_problem(
        await post_files(client, auth(tenant), files, **fields), 422, "validation_error"
    )
    assert message in json.dumps(body)
    assert await stored(app, owner_pool, tenant) == (0, 0)


async def test_unknown_parts_are_refused_not_ignored(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    files = [upload("a.txt", b"text")]
    assert_problem(
        await post_files(client, auth(tenant), files, owner="x"), 422, "validation_error"
    )
    wrong_name = [("attachment", ("a.txt", b"text", "text/plain"))]
    assert_problem(await post_files(client, auth(tenant), wrong_name), 422, "validation_error")


async def test_unsupported_file_type_is_415_and_nothing_is_written(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    app: Litestar,
    owner_pool: asyncpg.Pool,
) -> None:
    tenant, _ = tenant_pair
    files = [upload("ok.txt", b"fine"), upload("deck.pptx", b"PK\x03\x04 zip bytes")]
    body = assert_problem(
        await post_files(client, auth(tenant), files), 415, "unsupported_media_type"
    )
    assert body["errors"] == [
        {"key": "files[1]", "filename": "deck.pptx", "message": body["detail"]}
    ]
    assert await stored(app, owner_pool, tenant) == (0, 0)


async def test_a_corrupt_pdf_refuses_the_whole_batch(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    app: Litestar,
    owner_pool: asyncpg.Pool,
) -> None:
    tenant, _ = tenant_pair
    files = [upload("good.md", b"# Good\n\nA fine document."), upload("broken.pdf", CORRUPT_PDF)]
    body = assert_problem(await post_files(client, auth(tenant), files), 422, "unreadable_file")
    assert body["errors"][0]["key"] == "files[1]"
    assert "broken.pdf" in body["detail"]
    assert await stored(app, owner_pool, tenant) == (0, 0)
    scanned = make_pdf([[]])  # a page with no text, like a scan without OCR
    empty = assert_problem(
        await post_files(client, auth(tenant), [upload("scan.pdf", scanned)]),
        422,
        "validation_error",
    )
    assert "no text" in empty["detail"]


async def test_request_content_type_must_be_json_or_multipart(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    response = await client.post(
        "/v1/documents",
        content=b"plain words",
        headers=auth(tenant) | {"content-type": "text/plain"},
    )
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("limit", "value", "files"),
    [
        ("max_file_bytes", 2048, [upload("big.txt", b"word " * 1000)]),
        ("max_files_per_request", 2, [upload(f"f{i}.txt", b"small") for i in range(3)]),
        ("max_upload_bytes", 4096, [upload(f"f{i}.txt", b"word " * 300) for i in range(4)]),
        ("max_document_chars", 100, [upload("long.txt", b"word " * 100)]),
    ],
)
async def test_upload_limits_are_413(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    app: Litestar,
    owner_pool: asyncpg.Pool,
    limit: str,
    value: int,
    files: list[File],
) -> None:
    tenant, _ = tenant_pair
    monkeypatch.setattr(settings.limits, limit, value)
    assert_problem(await post_files(client, auth(tenant), files), 413, "payload_too_large")
    assert await stored(app, owner_pool, tenant) == (0, 0)
    monkeypatch.undo()
    assert (await post_files(client, auth(tenant), files)).status_code == 201


async def test_json_body_limit_is_413(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, _ = tenant_pair
    monkeypatch.setattr(settings.limits, "max_request_bytes", 2048)
    body = {"documents": [{"title": "Big", "text": "word " * 1000}]}
    response = await client.post("/v1/documents", json=body, headers=auth(tenant))
    assert_problem(response, 413, "payload_too_large")


async def test_upload_must_match_the_callers_tenant(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, other = tenant_pair
    files = [upload("a.txt", b"text")]
    assert_problem(
        await post_files(client, auth(tenant), files, tenant_id=other), 403, "tenant_mismatch"
    )
    response = await post_files(client, auth(tenant), files, tenant_id=tenant)
    assert response.status_code == 201
    reader = auth(tenant, roles=(Role.SEARCH,))
    assert_problem(await post_files(client, reader, files), 403, "forbidden")


async def test_nul_characters_in_title_or_metadata_are_422_not_500(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    """Postgres text and jsonb cannot hold NUL: refused up front, on both encodings."""
    tenant, _ = tenant_pair
    for document in (
        {"title": "a\u0000b", "text": "words"},
        {"title": "t", "text": "words", "metadata": {"k": "a\u0000b"}},
        {"title": "t", "text": "words", "metadata": {"k": ["ok", "a\u0000b"]}},
    ):
        response = await client.post(
            "/v1/documents", json={"documents": [document]}, headers=auth(tenant)
        )
        assert_problem(response, 422, "validation_error")
    form = await post_files(
        client, auth(tenant), [upload("a.txt", b"words")], metadata='{"k": "a\\u0000b"}'
    )
    assert_problem(form, 422, "validation_error")
    # And NUL bytes inside the text itself are dropped by normalisation, not refused.
    response = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "nul", "title": "t", "text": "vole\u0000 burrow"}]},
        headers=auth(tenant),
    )
    assert response.status_code == 201, response.text
    (hit,) = await search(client, auth(tenant), "burrow")
    assert hit["text"] == "vole burrow"
