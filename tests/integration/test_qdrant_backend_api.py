"""The service on `vectors.backend: qdrant`: documents and search end to end, shared and dedicated.

Qdrant server is qdrant-client's local mode here (dev settings, no cluster key: no server binary
exists on this machine), so per-tenant keys are not in play; tests/integration/test_qdrant_keys.py
covers them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.main import create_app
from app.tenancy.manifest import RetrievalSpec
from app.tenancy.scope import Role, TenantScope
from app.vectors.qdrant_server import QdrantServerIndex
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant

Client = AsyncTestClient[Litestar]


@pytest.fixture(scope="module")
async def server_mode(settings: Settings, tmp_root: Path) -> AsyncIterator[tuple[Litestar, Client]]:
    """An app whose vectors live in qdrant-client's local mode."""
    config = settings.model_copy(deep=True)
    config.vectors.backend = "qdrant"
    config.vectors.qdrant.api_key_secret = None
    config.vectors.qdrant.path = tmp_root / f"qdrant-local-{uuid.uuid4().hex[:8]}"
    app = create_app(config)
    async with AsyncTestClient(app=app) as client:
        yield app, client


async def _search(client: Client, headers: dict[str, str], query: str) -> list[str]:
    response = await client.post("/v1/search", json={"query": query, "top_k": 10}, headers=headers)
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


async def _collection_ready(app: Litestar, tenant_id: str) -> None:
    index = app.state.resources.index
    assert isinstance(index, QdrantServerIndex)
    scope = TenantScope(tenant_id=tenant_id, subject="test", roles=frozenset())
    async with asyncio.timeout(10):
        while not await index.provisioned(scope):  # noqa: ASYNC110 - provisioned by a loop task
            await asyncio.sleep(0.1)


async def test_documents_search_and_delete_with_shared_and_dedicated_tenants(
    server_mode: tuple[Litestar, Client], make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    app, client = server_mode
    shared = await make_tenant("qs")
    dedicated = await make_tenant("qd", retrieval=RetrievalSpec(isolation="dedicated"))
    for tenant_id in (shared, dedicated):
        await wait_for_tenant(app, tenant_id)
    # Applied while the service runs: provisioned by its new-tenant poll.
    await _collection_ready(app, dedicated)

    for tenant_id in (shared, dedicated):
        response = await client.post(
            "/v1/documents",
            json={
                "documents": [
                    {"id": "open", "title": "Hours", "text": f"{tenant_id} opens at nine"},
                    {
                        "id": "pay",
                        "title": "Payroll",
                        "text": f"{tenant_id} payroll opens at nine",
                        "acl": {"groups": ["hr"]},
                    },
                ]
            },
            # The writer is in `hr`: nobody may write a document it could not see.
            headers=auth(tenant_id, groups=("hr",)),
        )
        assert response.status_code == 201, response.text

    for tenant_id in (shared, dedicated):
        assert sorted(await _search(client, auth(tenant_id), "opens at nine")) == ["open"]
        hr = auth(tenant_id, roles=(Role.SEARCH,), groups=("hr",))
        assert sorted(await _search(client, hr, "opens at nine")) == ["open", "pay"]

    index = app.state.resources.index
    assert isinstance(index, QdrantServerIndex)

    def scope(tenant_id: str) -> TenantScope:
        return TenantScope(tenant_id=tenant_id, subject="test", roles=frozenset())

    assert index.collection(scope(dedicated)) == f"bulkhead_t_{dedicated}"
    assert index.collection(scope(shared)) == "bulkhead_shared"

    response = await client.delete("/v1/documents/open", headers=auth(dedicated))
    assert response.status_code == 204
    assert await _search(client, auth(dedicated), "opens at nine") == []
    assert await _search(client, auth(shared), "opens at nine") == ["open"]


async def test_reingest_replaces_the_document_and_its_acl_in_server_mode(
    server_mode: tuple[Litestar, Client], make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    app, client = server_mode
    tenant_id = await make_tenant("qr")
    await wait_for_tenant(app, tenant_id)
    index = app.state.resources.index
    assert isinstance(index, QdrantServerIndex)
    scope = TenantScope(tenant_id=tenant_id, subject="test", roles=frozenset())

    async def ingest(text: str, acl: dict[str, list[str]] | None) -> None:
        document: dict[str, object] = {"id": "memo", "title": "Memo", "text": text}
        writer: tuple[str, ...] = ()
        if acl is not None:
            document["acl"] = acl
            writer = tuple(acl["groups"])  # nobody may write a document it could not see
        response = await client.post(
            "/v1/documents", json={"documents": [document]}, headers=auth(tenant_id, groups=writer)
        )
        assert response.status_code == 201, response.text

    await ingest("the wombat memo, first draft", None)
    await ingest("the wombat memo, final text", {"groups": ["board"]})

    response = await client.post(
        "/v1/search",
        json={"query": "wombat memo", "top_k": 10},
        headers=auth(tenant_id, roles=(Role.SEARCH,), groups=("board",)),
    )
    assert response.status_code == 200, response.text
    assert [hit["text"] for hit in response.json()["results"]] == ["the wombat memo, final text"]
    # The first version is gone, and the new one now needs the board group.
    assert await _search(client, auth(tenant_id), "wombat memo") == []
    assert await index.tenant_points(scope=scope) == 1


async def test_a_hidden_documents_id_written_by_an_outsider_leaves_it_in_server_mode(
    server_mode: tuple[Litestar, Client], make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    """The outsider's write and delete act on its own document (its own key), never on hr's."""
    app, client = server_mode
    tenant_id = await make_tenant("qa")
    await wait_for_tenant(app, tenant_id)
    index = app.state.resources.index
    assert isinstance(index, QdrantServerIndex)
    scope = TenantScope(tenant_id=tenant_id, subject="test", roles=frozenset())
    hr, outsider = auth(tenant_id, groups=("hr",)), auth(tenant_id, user="mallory")

    async def texts(headers: dict[str, str]) -> list[str]:
        response = await client.post(
            "/v1/search", json={"query": "payroll", "top_k": 10}, headers=headers
        )
        assert response.status_code == 200, response.text
        return sorted(hit["text"] for hit in response.json()["results"])

    for headers, document in (
        (hr, {"text": "the payroll secret", "acl": {"groups": ["hr"]}}),
        (outsider, {"text": "the payroll rumour"}),
    ):
        response = await client.post(
            "/v1/documents",
            json={"documents": [{"id": "pay", "title": "Pay", **document}]},
            headers=headers,
        )
        assert response.status_code == 201, response.text
    assert await texts(hr) == ["the payroll rumour", "the payroll secret"]
    assert await texts(outsider) == ["the payroll rumour"]
    assert await index.tenant_points(scope=scope) == 2

    assert (await client.delete("/v1/documents/pay", headers=outsider)).status_code == 204
    assert await texts(hr) == ["the payroll secret"]
    again = await client.delete("/v1/documents/pay", headers=outsider)
    assert (again.status_code, again.json()["code"]) == (404, "not_found")
    assert await index.tenant_points(scope=scope) == 1
