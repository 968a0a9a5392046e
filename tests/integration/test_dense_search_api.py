"""Dense and hybrid tenants end to end.

The real app, Postgres, Qdrant Edge, the `openai` SDK against the emulator, and the tenant's
key from the local secrets backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.secrets.local import LocalSecretsBackend
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.manifest import ChainEntry, EmbeddingEndpoint, LlmSpec, RetrievalSpec
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant
from tests.provider_emulator import EmulatorServer

Client = AsyncTestClient[Litestar]
EmbedTenant = Callable[..., Awaitable[str]]
DOCS = [
    {"id": "travel", "title": "Travel", "text": "Hotel stays are paid up to 180 euros a night."},
    {"id": "laptops", "title": "Laptops", "text": "Staff laptops are replaced every three years."},
    {"id": "parking", "title": "Parking", "text": "Visitors park on level one near the lifts."},
]


@pytest.fixture
def embed_tenant(
    app: Litestar,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
    kek: bytes,
    emulator: EmulatorServer,
) -> EmbedTenant:
    """A tenant with `embedder`, its OpenAI key stored under `tenants/<id>/openai`."""

    async def make(embedder: str, key: str = "sk-emb-tenant-0123456789") -> str:
        tenant_id = f"emb-{uuid.uuid4().hex[:10]}"
        await make_tenant(
            tenant_id=tenant_id,
            retrieval=RetrievalSpec(
                embedder=embedder,
                openai=EmbeddingEndpoint(
                    secret=f"tenants/{tenant_id}/openai", base_url=emulator.url + "/v1"
                ),
            ),
            llm=LlmSpec(chain=(ChainEntry(provider="local"),)),
        )
        await wait_for_tenant(app, tenant_id)
        scope = TenantScope(tenant_id=tenant_id, subject="ops", roles=frozenset())
        await LocalSecretsBackend(app_pool, kek).put(
            SecretRef(tenant_id, "openai"), SecretValue(key), scope=scope
        )
        return tenant_id

    return make


async def _search(client: Client, headers: dict[str, str], query: str) -> list[str]:
    response = await client.post("/v1/search", json={"query": query, "top_k": 3}, headers=headers)
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


@pytest.mark.parametrize("kind", ["openai", "hybrid:openai"])
async def test_dense_and_hybrid_tenants_ingest_and_search(
    client: Client,
    embed_tenant: EmbedTenant,
    auth: AuthHeaders,
    spans: InMemorySpanExporter,
    kind: str,
) -> None:
    tenant = await embed_tenant(f"{kind}:text-embedding-3-small/256")
    spans.clear()
    response = await client.post("/v1/documents", json={"documents": DOCS}, headers=auth(tenant))
    assert response.status_code == 201, response.text
    ingested = {s.context.span_id: s for s in spans.get_finished_spans()}
    batch = next(s for s in ingested.values() if s.name.startswith("embeddings "))
    assert batch.parent is not None
    assert ingested[batch.parent.span_id].name == "ingest documents"
    assert dict(batch.attributes or {})["gen_ai.usage.input_tokens"] > 0
    spans.clear()

    assert (await _search(client, auth(tenant), "laptops replaced"))[0] == "laptops"
    assert (await _search(client, auth(tenant), "visitors park near the lifts"))[0] == "parking"

    finished = spans.get_finished_spans()
    retrieval = [
        s
        for s in finished
        if s.name == f"retrieval {kind.split(':')[0].replace('openai', 'dense')}"
    ]
    embeds = [s for s in finished if s.name == "embeddings text-embedding-3-small"]
    assert len(retrieval) == 2, [s.name for s in finished]
    assert len(embeds) == 2, "one query embedding per search"
    for span in embeds:
        parent = next(
            r for r in retrieval if span.parent and r.context.span_id == span.parent.span_id
        )
        attributes = dict(span.attributes or {})
        assert attributes["bulkhead.tenant.id"] == tenant
        assert attributes["gen_ai.operation.name"] == "embeddings"
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["enduser.id"] == dict(parent.attributes or {})["enduser.id"]
        assert attributes["enduser.id"] != "alice"


async def test_hybrid_tenants_sharing_a_space_never_see_each_other(
    client: Client, embed_tenant: EmbedTenant, auth: AuthHeaders
) -> None:
    embedder = "hybrid:openai:text-embedding-3-small/256"
    first, second = await embed_tenant(embedder), await embed_tenant(embedder)
    secret = {"id": "secret", "title": "Merger", "text": "The merger with Initech closes in May."}
    response = await client.post("/v1/documents", json={"documents": [secret]}, headers=auth(first))
    assert response.status_code == 201
    response = await client.post("/v1/documents", json={"documents": DOCS}, headers=auth(second))
    assert response.status_code == 201
    assert await _search(client, auth(first), "merger Initech May") == ["secret"]
    found = await _search(client, auth(second), "merger Initech closes in May")
    assert "secret" not in found
    assert len(found) == 3, "dense always finds neighbours: only the tenant's own"
    filtered = await client.post(
        "/v1/search",
        json={"query": "merger", "filter": {"tenant_id": first}},
        headers=auth(second),
    )
    assert filtered.status_code == 422, "tenant_id is reserved in filters"


@pytest.mark.parametrize(
    ("model", "key", "reason"),
    [
        ("text-embedding-3-small@500", "sk-emb-tenant-0123456789", "server_error"),
        ("text-embedding-3-small", "sk-revoked-9f8e7d6c5b4a", "auth"),
    ],
)
async def test_failed_embeddings_refuse_the_ingest_and_write_nothing(
    app: Litestar,
    client: Client,
    embed_tenant: EmbedTenant,
    auth: AuthHeaders,
    model: str,
    key: str,
    reason: str,
) -> None:
    tenant = await embed_tenant(f"openai:{model}/32", key=key)
    response = await client.post("/v1/documents", json={"documents": DOCS}, headers=auth(tenant))
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "providers_unavailable"
    assert reason in body["detail"]
    assert int(response.headers["retry-after"]) >= 1
    assert key not in response.text
    assert key[3:] not in response.text
    listed = await client.get("/v1/documents", headers=auth(tenant))
    assert listed.json()["documents"] == []
    scope = TenantScope(tenant_id=tenant, subject="check", roles=frozenset())
    index = app.state.resources.embedders.spaces.index_for(EmbedderSpec.parse(f"openai:{model}/32"))
    assert await index.count(scope=scope) == 0, "no vector was written"
