"""Offboarding deletes a tenant's vectors itself when no running service holds the shard.

Real Qdrant Edge shard in a temporary directory; points of two tenants, one with an ACL so it
is invisible to ordinary reads (offboarding must delete it too).
"""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.retrieval.edge import EdgeIndex
from app.retrieval.index import ChunkRecord
from app.tenancy.keycheck import admin_scope
from app.tenancy.offboard import delete_vectors


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
    gone, stays = admin_scope("gone-tenant"), admin_scope("stays-tenant")
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
