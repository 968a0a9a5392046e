"""Offboarding deletes a tenant's vectors itself when no running service holds the shard.

Real Qdrant Edge shard in a temporary directory; points of two tenants, one with an ACL so it
is invisible to ordinary reads (offboarding must delete it too).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from app.config import Settings
from app.lifecycle.offboard import delete_vectors
from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.scope import TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.index import ChunkRecord
from app.vectors.spaces import VectorSpaces


def _chunk(tenant: str, index: int, acl: tuple[str, ...] | None = None) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=EdgeIndex.point_id(tenant, "doc", 1, index),
        document_id="doc",
        version=1,
        index=index,
        title="Travel",
        section="",
        text=f"hotel allowance {index}",
        acl_groups=acl,
    )


async def test_direct_delete_removes_every_point_of_that_tenant_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    index = EdgeIndex.open(settings.vector_path)
    gone, stays = TenantScope.operator("gone-tenant"), TenantScope.operator("stays-tenant")
    await index.upsert(
        scope=gone, chunks=[_chunk("gone-tenant", 0), _chunk("gone-tenant", 1, ("hr",))]
    )
    await index.upsert(scope=stays, chunks=[_chunk("stays-tenant", 0)])
    await index.close()

    report = await delete_vectors(settings, tenant_id="gone-tenant")
    assert report == "deleted 2 vectors"

    index = EdgeIndex.open(settings.vector_path)
    try:
        assert await index.tenant_points(scope=gone) == 0
        assert await index.tenant_points(scope=stays) == 1
    finally:
        await index.close()


async def test_a_shard_held_by_the_service_is_left_to_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    held = EdgeIndex.open(settings.vector_path)
    try:
        report = await delete_vectors(settings, tenant_id="any-tenant")
    finally:
        await held.close()
    assert "running service" in report


async def test_dense_spaces_are_swept_too(tmp_path: Path) -> None:
    """Offboarding empties every dense space on disk of that tenant.

    A dense tenant's chunks live in its embedding space's shard, and a reindex can leave a copy
    in the previous space.
    """
    settings = Settings(data_dir=tmp_path)
    gone, stays = TenantScope.operator("gone-tenant"), TenantScope.operator("stays-tenant")
    spaces = VectorSpaces(
        EdgeIndex.open(settings.vector_path), settings.dense_vector_root, search_threads=1
    )
    for embedder in ("openai:text-embedding-3-small/8", "openai:text-embedding-3-large/4"):
        spec = EmbedderSpec.parse(embedder)
        index = spaces.index_for(spec)
        vector = [0.5] * spec.dimensions
        await index.upsert(scope=gone, chunks=[replace(_chunk("gone-tenant", 0), dense=vector)])
        await index.upsert(scope=stays, chunks=[replace(_chunk("stays-tenant", 0), dense=vector)])
    await spaces.close()
    await spaces.bm25.close()

    assert await delete_vectors(settings, tenant_id="gone-tenant") == "deleted 2 vectors"

    spaces = VectorSpaces(
        EdgeIndex.open(settings.vector_path), settings.dense_vector_root, search_threads=1
    )
    try:
        for embedder in ("openai:text-embedding-3-small/8", "openai:text-embedding-3-large/4"):
            index = spaces.index_for(EmbedderSpec.parse(embedder))
            assert await index.tenant_points(scope=gone) == 0
            assert await index.tenant_points(scope=stays) == 1
    finally:
        await spaces.close()
        await spaces.bm25.close()
