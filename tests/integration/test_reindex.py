"""`reindex_tenant`: re-embed, switch atomically, catch up, resume; search never goes empty.

Runs in the test app's process against its own shards (the CLI does the same in its own
process), with the real openai SDK against the emulator and the key in the secrets backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.cli import main
from app.config import LlmSettings, Settings, get_settings
from app.db.pool import connect
from app.llm.breaker import BreakerPolicy, BreakerRegistry
from app.retrieval.embedders import TenantEmbedders
from app.retrieval.reindex import reindex_tenant
from app.secrets.cache import SecretCache
from app.secrets.local import LocalSecretsBackend
from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.manifest import ManifestError, RetrievalSpec
from app.tenancy.scope import TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.index import ChunkRecord
from tests.conftest import AuthHeaders, TenantFactory
from tests.integration.test_dense_search_api import EmbedTenant, embed_tenant  # noqa: F401

Client = AsyncTestClient[Litestar]
HYBRID = "hybrid:openai:text-embedding-3-small/256"
DOCS = [
    {"id": f"doc-{n}", "title": f"Policy {n}", "text": f"Rule {n}: {word} requests go to desk {n}."}
    for n, word in enumerate(["travel", "laptop", "parking", "expense", "badge", "holiday", "vpn"])
]


class Interrupted(Exception):
    """Stands in for a Ctrl-C between two pages."""


async def _ingest(client: Client, headers: dict[str, str], docs: list[dict[str, str]]) -> None:
    response = await client.post("/v1/documents", json={"documents": docs}, headers=headers)
    assert response.status_code == 201, response.text


async def _hits(client: Client, headers: dict[str, str], query: str) -> list[str]:
    response = await client.post("/v1/search", json={"query": query, "top_k": 10}, headers=headers)
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


@pytest.fixture
async def embedders(
    app: Litestar, app_pool: asyncpg.Pool, kek: bytes
) -> AsyncIterator[TenantEmbedders]:
    """What `bulkhead reindex` builds: the app's shards, a key resolver of its own.

    The app serves from its own event loop, so its pool-backed secret cache is not shared.
    """
    resources = app.state.resources
    embedders = TenantEmbedders(
        registry=resources.registry,
        spaces=resources.embedders.spaces,
        resolver=SecretCache(LocalSecretsBackend(app_pool, kek)),
        settings=LlmSettings(),
        breakers=BreakerRegistry(BreakerPolicy()),
        batch_size=16,
    )
    yield embedders
    await embedders.aclose()


def _switched_in_app(app: Litestar, tenant: str, embedder: str) -> Callable[[], Awaitable[None]]:
    async def wait() -> None:
        registry = app.state.resources.registry
        async with asyncio.timeout(5):
            while registry.tenant(tenant).manifest.retrieval.embedder != embedder:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    return wait


def _count_in(app: Litestar, embedder: str, tenant: str) -> object:
    index = app.state.resources.embedders.spaces.index_for(EmbedderSpec.parse(embedder))
    return index.count(scope=TenantScope(tenant_id=tenant, subject="check", roles=frozenset()))


async def test_reindex_to_hybrid_keeps_search_answering_and_catches_up(
    app: Litestar,
    client: Client,
    embed_tenant: EmbedTenant,  # noqa: F811
    embedders: TenantEmbedders,
    auth: AuthHeaders,
    database_url: str,
    spans: InMemorySpanExporter,
) -> None:
    tenant = await embed_tenant("bm25")
    headers = auth(tenant)
    await _ingest(client, headers, DOCS)
    seen_during: list[list[str]] = []
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)

    async def search_between_pages() -> None:
        seen_during.append(await _hits(client, headers, "travel requests desk"))

    connection = await connect(database_url)
    try:
        # A page at a time, with a search and (once) writes from "another client" in between.
        original = embedders.spaces.bm25.scroll_chunks
        calls = 0

        async def scroll_and_interleave(**kwargs: object) -> object:
            nonlocal calls
            calls += 1
            await search_between_pages()
            if calls == 2:
                await _ingest(
                    client, headers, [{"id": "late", "title": "Late", "text": "Vpn late"}]
                )
                await _ingest(client, headers, [DOCS[0] | {"text": "Rule 0: travel is free now."}])
            return await original(**kwargs)  # type: ignore[arg-type]

        embedders.spaces.bm25.scroll_chunks = scroll_and_interleave  # type: ignore[method-assign]
        try:
            report = await reindex_tenant(
                connection,
                tenant_id=tenant,
                target=EmbedderSpec.parse(HYBRID),
                embedders=embedders,
                batch_size=2,
                grace_seconds=0,
                progress=progress,
                switched=_switched_in_app(app, tenant, HYBRID),
            )
        finally:
            del embedders.spaces.bm25.scroll_chunks
    finally:
        await connection.close()

    assert len(seen_during) >= 8
    assert all("doc-0" in hits for hits in seen_during), "search answered throughout"
    assert report.switched
    assert report.copied + report.caught_up - report.dropped == 8
    assert any("switched to" in line for line in lines)
    assert len(lines) >= 5
    spans.clear()
    hits = await _hits(client, headers, "travel free")
    assert hits[0] == "doc-0"
    assert len(hits) == len(set(hits)) == 8, "no duplicate, the late document included"
    assert "late" in hits
    assert any(s.name == "retrieval hybrid" for s in spans.get_finished_spans())
    assert await _count_in(app, "bm25", tenant) == 0, "the old space's copy is gone"  # type: ignore[misc]
    assert await _count_in(app, HYBRID, tenant) == 8  # type: ignore[misc]


async def test_interrupted_reindex_resumes_and_rerun_is_a_no_op(
    app: Litestar,
    client: Client,
    embed_tenant: EmbedTenant,  # noqa: F811
    embedders: TenantEmbedders,
    auth: AuthHeaders,
    database_url: str,
    emulator: object,
) -> None:
    tenant = await embed_tenant("bm25")
    await _ingest(client, auth(tenant), DOCS)
    target = EmbedderSpec.parse("openai:text-embedding-3-small/256")

    def stop_after_first_page(line: str) -> None:
        if "chunks (" in line:
            raise Interrupted

    connection = await connect(database_url)
    try:
        with pytest.raises(Interrupted):
            await reindex_tenant(
                connection,
                tenant_id=tenant,
                target=target,
                embedders=embedders,
                batch_size=3,
                grace_seconds=0,
                progress=stop_after_first_page,
            )
        embedder = await connection.fetchval(
            "SELECT manifest->'retrieval'->>'embedder' FROM tenants WHERE id = $1", tenant
        )
        assert embedder == "bm25", "not switched"
        assert len(await _hits(client, auth(tenant), "requests desk")) == 7
        report = await reindex_tenant(
            connection,
            tenant_id=tenant,
            target=target,
            embedders=embedders,
            batch_size=3,
            grace_seconds=0,
            switched=_switched_in_app(app, tenant, str(target)),
        )
        assert (report.skipped, report.copied) == (3, 4), "the first page was not embedded again"
        again = await reindex_tenant(
            connection, tenant_id=tenant, target=target, embedders=embedders
        )
        assert not again.switched
        assert again.copied == 0
    finally:
        await connection.close()
    assert len(await _hits(client, auth(tenant), "requests desk")) == 7


async def test_reindex_to_dense_needs_a_key_and_manifest_apply_cannot_change_the_embedder(
    make_tenant: TenantFactory,
    database_url: str,
    owner_pool: asyncpg.Pool,
    embedders: TenantEmbedders,
) -> None:
    tenant = await make_tenant("nokey")
    connection = await connect(database_url)
    try:
        with pytest.raises(ManifestError, match="needs a key"):
            await reindex_tenant(
                connection,
                tenant_id=tenant,
                target=EmbedderSpec.parse(HYBRID),
                embedders=embedders,
            )
    finally:
        await connection.close()
    with pytest.raises(ManifestError, match="bulkhead reindex"):
        await make_tenant(tenant_id=tenant, retrieval=RetrievalSpec(embedder=HYBRID))
    stored = await owner_pool.fetchval(
        "SELECT manifest->'retrieval'->>'embedder' FROM tenants WHERE id = $1", tenant
    )
    assert stored == "bm25"


def test_cli_refuses_an_unknown_embedder_form() -> None:
    result = CliRunner().invoke(main, ["reindex", "--tenant", "acme", "--embedder", "cohere:x"])
    assert result.exit_code == 2
    assert "bm25, openai:<model>" in result.output


async def test_cli_reindexes_a_shard_directory_with_progress(
    embed_tenant: EmbedTenant,  # noqa: F811
    settings: Settings,
    owner_pool: asyncpg.Pool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bulkhead reindex` in its own process state, on a shard directory of its own."""
    tenant = await embed_tenant("bm25")
    shard_dir = tmp_path / "qdrant"
    scope = TenantScope(tenant_id=tenant, subject="loader", roles=frozenset())
    bm25 = EdgeIndex.open(shard_dir)
    chunks = [
        ChunkRecord(
            EdgeIndex.point_id(tenant, d["id"], 1, 0), d["id"], 1, 0, d["title"], "", d["text"]
        )
        for d in DOCS
    ]
    await bm25.upsert(scope=scope, chunks=chunks)
    await bm25.close()
    assert settings.db.url is not None
    env = {
        "DATABASE_URL": settings.db.url,
        "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(settings.master_key_path),
        "BULKHEAD_DATA_DIR": str(tmp_path),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        args = ["reindex", "--tenant", tenant, "--embedder", HYBRID, "--batch-size", "3"]
        result = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--grace-seconds", "0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "7 chunks (7 embedded, 0 already there)" in result.output
    assert f"{tenant}: switched to {HYBRID}" in result.output
    stored = await owner_pool.fetchval(
        "SELECT manifest->'retrieval'->>'embedder' FROM tenants WHERE id = $1", tenant
    )
    assert stored == HYBRID
    spec = EmbedderSpec.parse(HYBRID)
    dense = EdgeIndex.open(tmp_path / "qdrant-dense" / str(spec.space), dense_size=256)
    bm25 = EdgeIndex.open(shard_dir)
    try:
        assert await dense.count(scope=scope) == 7
        assert await bm25.count(scope=scope) == 0
    finally:
        await dense.close()
        await bm25.close()
