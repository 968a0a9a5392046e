"""The reconcile pass: crash leftovers of ingestion and of offboarding, on real parts.

Real embedded Postgres (the runtime role, RLS armed per tenant) and real Qdrant Edge shards;
the Qdrant server adapter through qdrant-client's local mode (see `index_harness`). A crash is
simulated by doing exactly what ingestion does up to the commit and then stopping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from app.cli import main
from app.config import Settings, get_settings
from app.db.pool import tenant_transaction
from app.resources import open_resources
from app.retrieval import repository
from app.retrieval.reconcile import reconcile
from app.tenancy.embedder_spec import EmbedderSpec
from app.vectors.edge import EdgeIndex
from app.vectors.index import ChunkRecord, DocumentVersion, VectorIndex
from app.vectors.spaces import VectorSpaces
from tests.conftest import TenantFactory
from tests.integration.index_harness import ADAPTERS, Harness, chunk, open_harness, scope

DENSE = EmbedderSpec.parse("openai:text-embedding-3-small/8")
CHUNKS = 3


def _version(
    tenant_id: str, document_id: str, version: int, acl: tuple[str, ...] | None = None
) -> list[ChunkRecord]:
    return [
        chunk(
            tenant_id,
            document_id,
            f"wombat rule {i} of v{version}",
            version=version,
            index=i,
            acl=acl,
        )
        for i in range(CHUNKS)
    ]


async def _ingest_until_commit(
    pool: asyncpg.Pool,
    index: VectorIndex,
    tenant_id: str,
    document_id: str,
    version: int,
    *,
    acl: tuple[str, ...] | None = None,
    commit: bool = True,
) -> None:
    """Ingestion's steps up to its commit (`DocumentService.ingest`); a crash before publish."""
    chunks = _version(tenant_id, document_id, version, acl)
    async with tenant_transaction(pool, scope=scope(tenant_id)) as connection:
        await repository.lock_versions(connection, [document_id])
        await index.upsert(scope=scope(tenant_id), chunks=chunks, pending=True)
        if commit:
            await repository.save_all(
                connection,
                tenant_id=tenant_id,
                created_by="test",
                rows=[
                    repository.DocumentVersionRow(
                        document_id=document_id,
                        title=document_id,
                        metadata={},
                        acl_groups=list(acl) if acl else None,
                        chunk_count=CHUNKS,
                        content_sha256="",
                        version=version,
                    )
                ],
            )


async def _ingest(
    pool: asyncpg.Pool,
    index: VectorIndex,
    tenant_id: str,
    document_id: str,
    version: int,
    acl: tuple[str, ...] | None = None,
) -> None:
    """A whole ingest: up to the commit, then publish."""
    await _ingest_until_commit(pool, index, tenant_id, document_id, version, acl=acl)
    await index.publish(
        scope=scope(tenant_id), versions=[DocumentVersion(document_id, version, acl)]
    )


async def _texts(index: VectorIndex, tenant_id: str, *groups: str) -> list[str]:
    hits = await index.search(scope=scope(tenant_id, *groups), query="wombat rule", top_k=50)
    return sorted(hit.text for hit in hits)


def _expected(version: int) -> list[str]:
    return sorted(f"wombat rule {i} of v{version}" for i in range(CHUNKS))


@pytest.fixture(params=ADAPTERS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(request.param, tmp_path) as opened:
        yield opened


async def test_committed_version_left_pending_is_published_once(
    harness: Harness, app_pool: asyncpg.Pool, make_bare_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant = await make_bare_tenant("rc")
    await harness.onboard(tenant)
    index = harness.index
    await _ingest(app_pool, index, tenant, "doc", 1)
    await _ingest_until_commit(app_pool, index, tenant, "doc", 2, acl=("hr",))
    # The gap: the committed version is hidden, the old one still served.
    assert await _texts(index, tenant, "hr") == _expected(1)

    report = await reconcile(app_pool, VectorSpaces(index, None, search_threads=1))

    assert (report.published, report.discarded) == (1, 0)
    assert await _texts(index, tenant, "hr") == _expected(2)
    assert await _texts(index, tenant) == []  # published with the row's ACL, not everyone's
    assert await index.tenant_points(scope=scope(tenant)) == CHUNKS
    again = await reconcile(app_pool, VectorSpaces(index, None, search_threads=1))
    assert (again.published, again.discarded) == (0, 0)


async def test_versions_that_never_committed_are_deleted(
    harness: Harness, app_pool: asyncpg.Pool, make_bare_tenant: TenantFactory
) -> None:
    tenant, other = await make_bare_tenant("rc"), await make_bare_tenant("rc")
    for tenant_id in (tenant, other):
        await harness.onboard(tenant_id)
    index = harness.index
    await _ingest(app_pool, index, tenant, "doc", 1)
    await _ingest_until_commit(app_pool, index, tenant, "doc", 2, commit=False)
    await _ingest_until_commit(app_pool, index, tenant, "new", 1, commit=False)
    # Another tenant's committed document of the same id and version: not ours to decide.
    await _ingest_until_commit(app_pool, index, other, "new", 1)

    report = await reconcile(app_pool, VectorSpaces(index, None, search_threads=1))

    assert (report.published, report.discarded) == (1, 2)
    assert await _texts(index, tenant) == _expected(1)
    assert await index.tenant_points(scope=scope(tenant)) == CHUNKS
    assert await _texts(index, other) == _expected(1)


async def test_removed_tenants_points_are_deleted_and_no_one_elses(
    tmp_path: Path,
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    make_bare_tenant: TenantFactory,
) -> None:
    kept = await make_bare_tenant("keep")
    no_documents = await make_bare_tenant("nodocs")
    removed = await make_bare_tenant("gone")
    prefix = kept[:-4]  # an orphan id that is a prefix of a real tenant's
    bm25 = EdgeIndex.open(tmp_path / "qdrant")
    spaces = VectorSpaces(bm25, tmp_path / "dense", search_threads=1)
    dense = spaces.index_for(DENSE)
    vector = [0.5] * 8
    try:
        await _ingest(app_pool, bm25, kept, "doc", 1)
        # Points but no documents row (e.g. copied by a reindex): reconcile must keep them.
        await bm25.upsert(scope=scope(no_documents), chunks=_version(no_documents, "doc", 1))
        for tenant_id in (removed, prefix):
            await bm25.upsert(scope=scope(tenant_id), chunks=_version(tenant_id, "doc", 1))
            await dense.upsert(
                scope=scope(tenant_id),
                chunks=[chunk(tenant_id, "doc", "wombat", dense=vector, index=i) for i in range(2)],
            )
        await owner_pool.execute("DELETE FROM tenants WHERE id = $1", removed)

        report = await reconcile(app_pool, spaces, batch_size=1)

        assert sorted(report.orphan_tenants) == sorted([removed, prefix])
        assert report.orphan_points == 2 * (CHUNKS + 2)
        for tenant_id in (removed, prefix):
            assert await bm25.tenant_points(scope=scope(tenant_id)) == 0
            assert await dense.tenant_points(scope=scope(tenant_id)) == 0
        assert await _texts(bm25, kept) == _expected(1)
        assert await _texts(bm25, no_documents) == _expected(1)
        assert await bm25.tenant_points(scope=scope(no_documents)) == CHUNKS
    finally:
        await spaces.close()
        await bm25.close()


async def test_server_adapter_reports_orphans_unchecked(
    tmp_path: Path, app_pool: asyncpg.Pool, make_bare_tenant: TenantFactory
) -> None:
    """Server mode lists no tenant ids (scoped keys only): said so, and nothing is deleted."""
    async with open_harness("qdrant-shared", tmp_path) as harness:
        ghost = "ghost-never-onboarded"
        await harness.onboard(ghost)
        await harness.index.upsert(scope=scope(ghost), chunks=_version(ghost, "doc", 1))
        report = await reconcile(app_pool, VectorSpaces(harness.index, None, search_threads=1))
        assert report.orphans_unchecked
        assert report.orphan_tenants == []
        assert await harness.index.tenant_points(scope=scope(ghost)) == CHUNKS


async def test_cli_reconciles_one_tenant(
    tmp_path: Path,
    settings: Settings,
    app_pool: asyncpg.Pool,
    make_bare_tenant: TenantFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, untouched = await make_bare_tenant("cli"), await make_bare_tenant("cli")
    orphan = "cli-orphan"
    bm25 = EdgeIndex.open(tmp_path / "qdrant")
    for tenant_id in (tenant, untouched):
        await _ingest(app_pool, bm25, tenant_id, "doc", 1)
        await _ingest_until_commit(app_pool, bm25, tenant_id, "doc", 2)
    await bm25.upsert(scope=scope(orphan), chunks=_version(orphan, "doc", 1))
    await bm25.close()
    assert settings.db.url is not None
    monkeypatch.setenv("DATABASE_URL", settings.db.url)
    monkeypatch.setenv("BULKHEAD_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        runs = [
            await asyncio.to_thread(
                CliRunner().invoke, main, ["vectors", "reconcile", "--tenant", tenant_id]
            )
            for tenant_id in (tenant, orphan)
        ]
    finally:
        get_settings.cache_clear()
    for run in runs:
        assert run.exit_code == 0, run.output
    assert "published 1 pending versions, discarded 0" in runs[0].output
    assert f"deleted {CHUNKS} points of 1 removed tenants: {orphan}" in runs[1].output
    bm25 = EdgeIndex.open(tmp_path / "qdrant")
    try:
        assert await _texts(bm25, tenant) == _expected(2)
        assert await _texts(bm25, untouched) == _expected(1)  # --tenant: only that tenant
        assert await bm25.tenant_points(scope=scope(orphan)) == 0
    finally:
        await bm25.close()


async def test_service_start_up_fixes_a_crash_leftover(
    tmp_path: Path, settings: Settings, app_pool: asyncpg.Pool, make_bare_tenant: TenantFactory
) -> None:
    tenant = await make_bare_tenant("boot")
    orphan = f"{tenant}-gone"
    bm25 = EdgeIndex.open(tmp_path / "qdrant")
    await _ingest(app_pool, bm25, tenant, "doc", 1)
    await _ingest_until_commit(app_pool, bm25, tenant, "doc", 2)
    await bm25.upsert(scope=scope(orphan), chunks=_version(orphan, "doc", 1))
    await bm25.close()
    started = settings.model_copy(deep=True)
    started.data_dir = tmp_path
    started.secrets.master_key_file = settings.master_key_path
    async with open_resources(started) as resources:
        report = await asyncio.wait_for(resources.reconciled, timeout=30)
        assert report is not None
        assert report.published == 1
        assert orphan in report.orphan_tenants
        assert await _texts(resources.index, tenant) == _expected(2)
        assert await resources.index.tenant_points(scope=scope(orphan)) == 0
