"""Tenant B attacks tenant A's documents through every door of the API.

The model under attack is docs/architecture.md, Isolation. Each test would fail if the forced
condition (`app/vectors/scoping.py::forced_condition`, which both vector adapters translate)
were removed or widened, or if RLS stopped scoping the relational rows.
"""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import AuthHeaders

Client = AsyncTestClient[Litestar]

SECRET_TEXT = "The xylophone merger closes on the ninth of March at Quillfeather Ltd."


@pytest.fixture
async def victim_and_attacker(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> tuple[str, str]:
    victim, attacker = tenant_pair
    response = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "merger", "title": "Merger", "text": SECRET_TEXT}]},
        headers=auth(victim),
    )
    assert response.status_code == 201
    return victim, attacker


async def test_search_never_returns_another_tenants_chunks(
    client: Client, victim_and_attacker: tuple[str, str], auth: AuthHeaders
) -> None:
    victim, attacker = victim_and_attacker
    query = {"query": "xylophone merger Quillfeather", "top_k": 50}
    own = await client.post("/v1/search", json=query, headers=auth(victim))
    assert [hit["document_id"] for hit in own.json()["results"]] == ["merger"]
    stolen = await client.post("/v1/search", json=query, headers=auth(attacker))
    assert stolen.status_code == 200
    assert stolen.json()["results"] == []


async def test_chat_never_cites_another_tenants_chunks(
    client: Client, victim_and_attacker: tuple[str, str], auth: AuthHeaders
) -> None:
    _, attacker = victim_and_attacker
    response = await client.post(
        "/v1/chat",
        json={"message": "When does the xylophone merger close?"},
        headers=auth(attacker),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["citations"] == []
    assert "Quillfeather" not in body["answer"]


async def test_listing_shows_only_own_documents(
    client: Client, victim_and_attacker: tuple[str, str], auth: AuthHeaders
) -> None:
    _, attacker = victim_and_attacker
    listing = await client.get("/v1/documents", headers=auth(attacker))
    assert listing.status_code == 200
    assert listing.json() == {"documents": [], "next_cursor": None}


async def test_delete_by_guessed_id_is_not_found_and_harmless(
    client: Client, victim_and_attacker: tuple[str, str], auth: AuthHeaders
) -> None:
    victim, attacker = victim_and_attacker
    response = await client.delete("/v1/documents/merger", headers=auth(attacker))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    still = await client.post("/v1/search", json={"query": "xylophone"}, headers=auth(victim))
    assert [hit["document_id"] for hit in still.json()["results"]] == ["merger"]


async def test_same_document_id_in_two_tenants_stays_separate(
    client: Client, victim_and_attacker: tuple[str, str], auth: AuthHeaders
) -> None:
    victim, attacker = victim_and_attacker
    overwrite = {"documents": [{"id": "merger", "title": "Mine", "text": "Attacker text only."}]}
    response = await client.post("/v1/documents", json=overwrite, headers=auth(attacker))
    assert response.status_code == 201
    victim_hits = await client.post("/v1/search", json={"query": "xylophone"}, headers=auth(victim))
    assert [hit["text"] for hit in victim_hits.json()["results"]] == [SECRET_TEXT]
    listing = await client.get("/v1/documents", headers=auth(victim))
    assert [(d["id"], d["title"], d["version"]) for d in listing.json()["documents"]] == [
        ("merger", "Merger", 1)
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/search", {"query": "xylophone"}),
        ("POST", "/v1/chat", {"message": "xylophone?"}),
        ("POST", "/v1/documents", {"documents": [{"title": "t", "text": "x"}]}),
        ("GET", "/v1/documents", None),
        ("DELETE", "/v1/documents/merger", None),
    ],
)
async def test_tenant_header_naming_another_tenant_is_refused(
    client: Client,
    victim_and_attacker: tuple[str, str],
    auth: AuthHeaders,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    victim, attacker = victim_and_attacker
    headers = auth(attacker) | {"X-Tenant-ID": victim}
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_mismatch"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/search", {"query": "xylophone", "tenant_id": "{victim}"}),
        ("/v1/chat", {"message": "xylophone?", "tenant_id": "{victim}"}),
        ("/v1/documents", {"tenant_id": "{victim}", "documents": [{"title": "t", "text": "x"}]}),
        ("/v1/documents", {"documents": [{"title": "t", "text": "x", "tenant_id": "{victim}"}]}),
    ],
)
async def test_body_naming_another_tenant_is_refused(
    client: Client,
    victim_and_attacker: tuple[str, str],
    auth: AuthHeaders,
    path: str,
    body: dict[str, object],
) -> None:
    victim, attacker = victim_and_attacker
    payload = _fill(body, victim)
    response = await client.post(path, json=payload, headers=auth(attacker))
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_mismatch"
    own = await client.post("/v1/search", json={"query": "xylophone"}, headers=auth(attacker))
    assert own.json()["results"] == []


async def test_body_naming_own_tenant_is_accepted(
    client: Client, victim_and_attacker: tuple[str, str], auth: AuthHeaders
) -> None:
    victim, _ = victim_and_attacker
    response = await client.post(
        "/v1/search", json={"query": "xylophone", "tenant_id": victim}, headers=auth(victim)
    )
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize(
    "search_filter",
    [
        {"tenant_id": "{victim}"},
        {"tenant_id": {"in": ["{victim}", "{attacker}"]}},
        {"_bulkhead_acl": "*"},
        {"_bulkhead_version": 1},
        {"team": {"$or": [{"tenant_id": "{victim}"}]}},
        {"team": {"in": ["x"], "should": [{"tenant_id": "{victim}"}]}},
    ],
)
async def test_filters_cannot_name_or_widen_the_tenant(
    client: Client,
    victim_and_attacker: tuple[str, str],
    auth: AuthHeaders,
    search_filter: dict[str, object],
) -> None:
    victim, attacker = victim_and_attacker
    payload = {"query": "xylophone", "filter": _fill(search_filter, victim, attacker)}
    response = await client.post("/v1/search", json=payload, headers=auth(attacker))
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_reserved_metadata_is_refused_and_nothing_is_written(
    client: Client, victim_and_attacker: tuple[str, str], auth: AuthHeaders
) -> None:
    victim, attacker = victim_and_attacker
    documents = [
        {"id": "innocent", "title": "ok", "text": "xylophone notes"},
        {"id": "forged", "title": "forged", "text": "xylophone", "metadata": {"tenant_id": victim}},
    ]
    response = await client.post(
        "/v1/documents", json={"documents": documents}, headers=auth(attacker)
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    listing = await client.get("/v1/documents", headers=auth(attacker))
    assert listing.json()["documents"] == []
    victims_view = await client.post(
        "/v1/search", json={"query": "xylophone"}, headers=auth(victim)
    )
    assert [hit["document_id"] for hit in victims_view.json()["results"]] == ["merger"]


def _fill(value: object, victim: str, attacker: str = "") -> object:
    if isinstance(value, str):
        return value.format(victim=victim, attacker=attacker)
    if isinstance(value, list):
        return [_fill(v, victim, attacker) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, victim, attacker) for k, v in value.items()}
    return value
