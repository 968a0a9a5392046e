"""Re-ingestion and deletion as searches see them, and what is left in each store."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import httpx
import pytest
import qdrant_edge as qe
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.retrieval import repository
from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex, edge_filter
from app.vectors.index import ChunkRecord, DocumentVersion
from app.vectors.scoping import forced_condition
from tests.conftest import AuthHeaders
from tests.live_server import wait_until_known

Client = AsyncTestClient[Litestar]
CHUNKS = 12
REVISIONS = 6
_REVISION = re.compile(r"revision (r\d+)")


def scope_of(tenant: str, *groups: str) -> TenantScope:
    return TenantScope(
        tenant_id=tenant, subject="test", roles=frozenset({Role.INGEST}), groups=groups
    )


def all_points(index: EdgeIndex, tenant: str) -> int:
    """Every point of the tenant, pending ones included: read past the API on purpose."""
    condition = edge_filter(forced_condition(scope_of(tenant), reading=False))
    count: int = index._shard.count(qe.CountRequest(filter=condition))
    return count


def revision_text(revision: int) -> str:
    # One heading per section: the chunker makes one chunk per section, CHUNKS in all.
    return "\n\n".join(
        f"## Part {i}\n\nThe wombat rule {i} of revision r{revision}. " + "filler words " * 60
        for i in range(CHUNKS)
    )


async def ingest(
    client: Client | httpx.AsyncClient, headers: dict[str, str], revision: int
) -> None:
    body = {"documents": [{"id": "rules", "title": "Rules", "text": revision_text(revision)}]}
    response = await client.post("/v1/documents", json=body, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["documents"] == [{"id": "rules", "chunks": CHUNKS}]


async def test_searches_during_reingests_never_see_duplicates_or_nothing(
    live_server: str, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    """Over real HTTP (a uvicorn process), so searches really run while re-ingests do."""
    tenant, _ = tenant_pair
    headers = auth(tenant)
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        await wait_until_known(http, headers)
        await ingest(http, headers, 0)
        done = asyncio.Event()
        observed: list[list[dict[str, Any]]] = []

        async def reingest() -> None:
            try:
                for revision in range(1, REVISIONS + 1):
                    await ingest(http, headers, revision)
            finally:
                done.set()

        async def keep_searching() -> None:
            while not done.is_set():
                response = await http.post(
                    "/v1/search", json={"query": "wombat rule", "top_k": 50}, headers=headers
                )
                assert response.status_code == 200
                observed.append(response.json()["results"])

        await asyncio.gather(reingest(), *(keep_searching() for _ in range(4)))
    assert len(observed) >= REVISIONS * 4, "the searches did not overlap the re-ingests"
    revisions_seen: set[str] = set()
    for hits in observed:
        revisions = {_REVISION.search(hit["text"]).group(1) for hit in hits}  # type: ignore[union-attr]
        assert len(hits) == CHUNKS, f"{len(hits)} hits: a duplicate or a missing chunk"
        assert len(revisions) == 1, f"two versions at once: {revisions}"
        assert len({hit["chunk_id"] for hit in hits}) == CHUNKS
        revisions_seen |= revisions
    assert f"r{REVISIONS}" in revisions_seen
    assert len(revisions_seen) > 2, "searches did not run between the re-ingests"


async def test_pending_chunks_are_invisible_until_published(
    app: Litestar, tenant_pair: tuple[str, str]
) -> None:
    tenant, _ = tenant_pair
    index: EdgeIndex = app.state.resources.index
    reader = scope_of(tenant, "hr")
    chunks = [
        ChunkRecord(
            chunk_id=EdgeIndex.point_id(tenant, "memo", version, 0),
            document_id="memo",
            version=version,
            index=0,
            title="Memo",
            section="",
            text=f"capybara memo version {version}",
            acl_groups=("hr",),
        )
        for version in (1, 2)
    ]
    await index.upsert(scope=reader, chunks=chunks[:1])
    await index.upsert(scope=reader, chunks=chunks[1:], pending=True)
    hits = await index.search(scope=reader, query="capybara", top_k=10)
    assert [h.text for h in hits] == ["capybara memo version 1"]
    assert (await index.count(scope=reader), all_points(index, tenant)) == (1, 2)
    await index.publish(scope=reader, versions=[DocumentVersion("memo", 2, ("hr",))])
    hits = await index.search(scope=reader, query="capybara", top_k=10)
    assert [h.text for h in hits] == ["capybara memo version 2"]
    assert all_points(index, tenant) == 1
    # The ACL is restored on publish, not widened: a caller outside `hr` still sees nothing.
    assert await index.search(scope=scope_of(tenant), query="capybara", top_k=10) == []


async def test_a_late_publish_of_an_older_version_keeps_the_newer_one(
    app: Litestar, tenant_pair: tuple[str, str]
) -> None:
    tenant, _ = tenant_pair
    index: EdgeIndex = app.state.resources.index
    scope = scope_of(tenant)

    def chunk(version: int) -> ChunkRecord:
        return ChunkRecord(
            chunk_id=EdgeIndex.point_id(tenant, "race", version, 0),
            document_id="race",
            version=version,
            index=0,
            title="Race",
            section="",
            text=f"ocelot version {version}",
        )

    await index.upsert(scope=scope, chunks=[chunk(2)], pending=True)
    await index.upsert(scope=scope, chunks=[chunk(3)], pending=True)
    await index.publish(scope=scope, versions=[DocumentVersion("race", 3, None)])
    await index.publish(scope=scope, versions=[DocumentVersion("race", 2, None)])
    hits = await index.search(scope=scope, query="ocelot", top_k=10)
    assert [h.text for h in hits] == ["ocelot version 3"]


async def test_delete_removes_the_row_and_every_vector(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    app: Litestar,
    owner_pool: asyncpg.Pool,
) -> None:
    tenant, _ = tenant_pair
    headers = auth(tenant)
    await ingest(client, headers, 1)
    await ingest(client, headers, 2)
    index: EdgeIndex = app.state.resources.index
    rows = (
        "SELECT count(*) FROM documents WHERE tenant_id = $1 AND split_part(id, '~', 1) = 'rules'"
    )
    assert (await owner_pool.fetchval(rows, tenant), all_points(index, tenant)) == (1, CHUNKS)
    response = await client.delete("/v1/documents/rules", headers=headers)
    assert response.status_code == 204
    assert (await owner_pool.fetchval(rows, tenant), all_points(index, tenant)) == (0, 0)


async def test_a_pending_write_replaces_an_unpublished_attempt_at_the_same_version(
    app: Litestar, tenant_pair: tuple[str, str]
) -> None:
    tenant, _ = tenant_pair
    index: EdgeIndex = app.state.resources.index
    scope = scope_of(tenant)

    def attempt(count: int, word: str) -> list[ChunkRecord]:
        return [
            ChunkRecord(
                chunk_id=EdgeIndex.point_id(tenant, "retry", 1, i),
                document_id="retry",
                version=1,
                index=i,
                title="Retry",
                section="",
                text=f"{word} chunk {i}",
            )
            for i in range(count)
        ]

    await index.upsert(scope=scope, chunks=attempt(3, "abandoned"), pending=True)
    await index.upsert(scope=scope, chunks=attempt(1, "kept"), pending=True)
    await index.publish(scope=scope, versions=[DocumentVersion("retry", 1, None)])
    hits = await index.search(scope=scope, query="chunk", top_k=10)
    assert [h.text for h in hits] == ["kept chunk 0"]
    assert all_points(index, tenant) == 1


async def test_a_failure_after_the_vectors_are_written_leaves_nothing(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    app: Litestar,
    owner_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: the row write raises (a stand-in for a lost connection)."""
    tenant, _ = tenant_pair

    async def failing_save(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("connection lost")

    monkeypatch.setattr(repository, "save_all", failing_save)
    documents = [{"id": f"d{i}", "title": "T", "text": f"Marmot fact {i}."} for i in range(3)]
    response = await client.post(
        "/v1/documents", json={"documents": documents}, headers=auth(tenant)
    )
    assert response.status_code == 500
    rows = await owner_pool.fetchval("SELECT count(*) FROM documents WHERE tenant_id = $1", tenant)
    assert (rows, all_points(app.state.resources.index, tenant)) == (0, 0)


async def test_concurrent_batches_sharing_documents_serialise_without_deadlock(
    live_server: str, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    """[a, b] and [b, a] at once, first ingests included: every version counted, none lost."""
    tenant, _ = tenant_pair
    headers = auth(tenant)
    rounds = 5

    def body(order: tuple[str, str], n: int) -> dict[str, Any]:
        return {
            "documents": [
                {"id": i, "title": i, "text": f"Jackal {i} note, writer round {n}."} for i in order
            ]
        }

    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        await wait_until_known(http, headers)

        async def writer(order: tuple[str, str]) -> list[int]:
            statuses = []
            for n in range(rounds):
                response = await http.post("/v1/documents", json=body(order, n), headers=headers)
                statuses.append(response.status_code)
            return statuses

        results = await asyncio.gather(writer(("a", "b")), writer(("b", "a")))
        assert results == [[201] * rounds] * 2
        listing = (await http.get("/v1/documents", headers=headers)).json()["documents"]
        assert {(d["id"], d["version"]) for d in listing} == {("a", 2 * rounds), ("b", 2 * rounds)}
        search = {"query": "jackal note", "top_k": 50}
        hits = (await http.post("/v1/search", json=search, headers=headers)).json()["results"]
        assert sorted(h["document_id"] for h in hits) == ["a", "b"]


async def test_one_publish_switches_documents_of_different_versions_and_acls(
    app: Litestar, tenant_pair: tuple[str, str]
) -> None:
    tenant, _ = tenant_pair
    index: EdgeIndex = app.state.resources.index
    writer = scope_of(tenant)

    def chunk(document_id: str, version: int, groups: tuple[str, ...] | None) -> ChunkRecord:
        return ChunkRecord(
            chunk_id=EdgeIndex.point_id(tenant, document_id, version, 0),
            document_id=document_id,
            version=version,
            index=0,
            title=document_id,
            section="",
            text=f"heron {document_id} v{version}",
            acl_groups=groups,
        )

    await index.upsert(scope=writer, chunks=[chunk("x", 1, None), chunk("z", 1, None)])
    await index.upsert(
        scope=writer,
        chunks=[chunk("x", 2, None), chunk("y", 1, ("hr",)), chunk("z", 2, ("hr",))],
        pending=True,
    )
    await index.publish(
        scope=writer,
        versions=[
            DocumentVersion("x", 2, None),
            DocumentVersion("y", 1, ("hr",)),
            DocumentVersion("z", 2, ("hr",)),
        ],
    )

    async def seen(*groups: str) -> list[str]:
        hits = await index.search(scope=scope_of(tenant, *groups), query="heron", top_k=10)
        return sorted(h.text for h in hits)

    assert await seen() == ["heron x v2"]
    assert await seen("hr") == ["heron x v2", "heron y v1", "heron z v2"]
    assert all_points(index, tenant) == 3


async def test_pending_chunks_are_not_copied_by_a_reindex_scroll(
    app: Litestar, tenant_pair: tuple[str, str]
) -> None:
    """A pending chunk read back as a plain chunk would come back visible to everyone."""
    tenant, _ = tenant_pair
    index: EdgeIndex = app.state.resources.index
    scope = scope_of(tenant)
    secret = ChunkRecord(
        chunk_id=EdgeIndex.point_id(tenant, "payroll", 1, 0),
        document_id="payroll",
        version=1,
        index=0,
        title="Payroll",
        section="",
        text="pending payroll chunk",
        acl_groups=("hr",),
    )
    await index.upsert(scope=scope, chunks=[secret], pending=True)
    chunks, _ = await index.scroll_chunks(scope=scope, offset=None, limit=100)
    assert chunks == []
    await index.publish(scope=scope, versions=[DocumentVersion("payroll", 1, ("hr",))])
    chunks, _ = await index.scroll_chunks(scope=scope, offset=None, limit=100)
    assert [(c.document_id, c.acl_groups) for c in chunks] == [("payroll", ("hr",))]
