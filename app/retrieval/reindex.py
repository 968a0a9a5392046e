"""Changing a tenant's embedder: re-embed its stored chunks, then switch, with no empty window.

1. Copy: page through the tenant's chunks in the current space; embed each page's text with the
   new embedder and write it to the new space. Chunks already there (same deterministic id)
   are skipped, so an interrupted run resumes where it stopped and a re-run is safe.
2. Switch: one transaction rewrites the tenant's manifest (`retrieval.embedder`), guarded by
   the digest read at the start, and NOTIFYs every replica. Until it commits, search and
   ingestion use the old space, which is untouched; from then on, the new one.
   Before the switch, and again after it, a catch-up pass copies chunks written to the old
   space during the copy and drops from the new space those the old one lost meanwhile (a
   re-ingested document's old version).
3. After a grace period for replicas to hear the NOTIFY, the old space's copy of the tenant
   is deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import msgspec

from app.db.pool import Connection
from app.db.registry import CHANNEL
from app.retrieval.embedders import Route, TenantEmbedders, chunk_embedding_text
from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.manifest import TenantManifest, parse_manifest
from app.tenancy.scope import Role, TenantScope
from app.vectors.index import ChunkRecord

REINDEX_SUBJECT = "bulkhead:reindex"


class ReindexConflict(RuntimeError):
    """The tenant's manifest changed while reindexing; nothing was switched."""


@dataclass(slots=True)
class ReindexReport:
    """What a reindex did."""

    tenant_id: str
    source: str
    target: str
    copied: int = 0
    skipped: int = 0
    caught_up: int = 0
    dropped: int = 0
    removed: int = 0
    switched: bool = False


async def reindex_tenant(
    connection: Connection,
    *,
    tenant_id: str,
    target: EmbedderSpec,
    embedders: TenantEmbedders,
    batch_size: int = 256,
    grace_seconds: float = 2.0,
    progress: Callable[[str], None] = lambda _: None,
    switched: Callable[[], Awaitable[None]] | None = None,
) -> ReindexReport:
    """Move `tenant_id` to the `target` embedder (see the module docstring).

    Args:
        connection: Owner connection (the tenant registry is written).
        tenant_id: The tenant.
        target: The new embedder.
        embedders: Routes and embedders (the tenant's OpenAI key comes from its manifest).
        batch_size: Chunks per page (and per embeddings request at most).
        grace_seconds: Wait between the switch and deleting the old space's chunks.
        progress: Called with one line per page and per step.
        switched: Awaited right after the switch commits (e.g. reload this process's registry).

    Raises:
        LookupError: No such tenant.
        ValueError: The target needs an OpenAI key the manifest does not name.
        ReindexConflict: The manifest changed during the run.
        ProvidersUnavailable: The embeddings model failed; the old embedder stays in use.
    """
    row = await connection.fetchrow(
        "SELECT manifest, manifest_sha256 FROM tenants WHERE id = $1", tenant_id
    )
    if row is None:
        raise LookupError(f"no tenant {tenant_id!r}")
    manifest = msgspec.convert(row["manifest"], TenantManifest)
    current = EmbedderSpec.parse(manifest.retrieval.embedder)
    report = ReindexReport(tenant_id, str(current), str(target))
    if str(current) == str(target):
        progress(f"{tenant_id}: already on {target}; nothing to do")
        return report
    retrieval = msgspec.structs.replace(manifest.retrieval, embedder=str(target))
    # Validated like an applied manifest (the new embedder may need a key the manifest lacks).
    updated = parse_manifest(
        msgspec.structs.replace(manifest, retrieval=retrieval).to_json(), source=tenant_id
    )
    scope = TenantScope.system(tenant_id, actor=REINDEX_SUBJECT, roles={Role.INGEST})
    source = embedders.route_for(tenant_id, current, manifest)
    destination = embedders.route_for(tenant_id, target, updated)
    same_space = source.index is destination.index
    copied_ids: set[str] = set()
    if not same_space:
        progress(f"{tenant_id}: copying chunks from {current} to {target}")
        await _copy(source, destination, scope, batch_size, report, copied_ids, progress)
        # Writes that landed during the copy, so the new space is complete at the switch.
        await _catch_up(source, destination, scope, batch_size, report, copied_ids)
    await _switch(connection, updated, expected_digest=row["manifest_sha256"])
    report.switched = True
    progress(f"{tenant_id}: switched to {target}")
    if switched is not None:
        await switched()
    if same_space:
        return report
    await _catch_up(source, destination, scope, batch_size, report, copied_ids)
    if grace_seconds > 0:
        await asyncio.sleep(grace_seconds)
    report.removed = await _remove_all(source, scope, batch_size)
    progress(
        f"{tenant_id}: done: {report.copied} embedded, {report.skipped} already there,"
        f" {report.caught_up} caught up, {report.dropped} dropped,"
        f" {report.removed} removed from {current}"
    )
    return report


async def _pages(route: Route, scope: TenantScope, batch_size: int) -> list[list[ChunkRecord]]:
    pages: list[list[ChunkRecord]] = []
    offset: str | None = None
    while True:
        chunks, offset = await route.index.scroll_chunks(
            scope=scope, offset=offset, limit=batch_size
        )
        if chunks:
            pages.append(chunks)
        if offset is None:
            return pages


async def _write(destination: Route, scope: TenantScope, chunks: list[ChunkRecord]) -> None:
    if destination.embedder is not None:
        texts = [chunk_embedding_text(c.title, c.section, c.text) for c in chunks]
        vectors = (await destination.embedder.embed(texts, scope=scope)).vectors
        chunks = [replace(c, dense=v) for c, v in zip(chunks, vectors, strict=True)]
    else:
        chunks = [replace(c, dense=None) for c in chunks]
    await destination.index.upsert(scope=scope, chunks=chunks)


async def _copy(
    source: Route,
    destination: Route,
    scope: TenantScope,
    batch_size: int,
    report: ReindexReport,
    copied_ids: set[str],
    progress: Callable[[str], None],
) -> None:
    offset: str | None = None
    while True:
        chunks, offset = await source.index.scroll_chunks(
            scope=scope, offset=offset, limit=batch_size
        )
        ids = [c.chunk_id for c in chunks]
        there = await destination.index.existing_ids(scope=scope, chunk_ids=ids)
        missing = [c for c in chunks if c.chunk_id not in there]
        if missing:
            await _write(destination, scope, missing)
        copied_ids.update(ids)
        report.copied += len(missing)
        report.skipped += len(there)
        progress(
            f"{scope.tenant_id}: {report.copied + report.skipped} chunks"
            f" ({report.copied} embedded, {report.skipped} already there)"
        )
        if offset is None:
            return


async def _switch(
    connection: Connection, manifest: TenantManifest, *, expected_digest: str
) -> None:
    async with connection.transaction():
        updated = await connection.execute(
            "UPDATE tenants SET manifest = $2, manifest_sha256 = $3, updated_at = now()"
            " WHERE id = $1 AND manifest_sha256 = $4",
            manifest.id,
            manifest.to_json(),
            manifest.sha256(),
            expected_digest,
        )
        if updated != "UPDATE 1":
            raise ReindexConflict(
                f"{manifest.id}: the manifest changed during the reindex; run it again"
            )
        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, manifest.id)


async def _catch_up(
    source: Route,
    destination: Route,
    scope: TenantScope,
    batch_size: int,
    report: ReindexReport,
    copied_ids: set[str],
) -> None:
    still: set[str] = set()
    for chunks in await _pages(source, scope, batch_size):
        still.update(c.chunk_id for c in chunks)
        fresh = [c for c in chunks if c.chunk_id not in copied_ids]
        there = await destination.index.existing_ids(
            scope=scope, chunk_ids=[c.chunk_id for c in fresh]
        )
        missing = [c for c in fresh if c.chunk_id not in there]
        if missing:
            await _write(destination, scope, missing)
            report.caught_up += len(missing)
        copied_ids.update(c.chunk_id for c in missing)
    # Copied earlier but gone from the source since: a document deleted or re-versioned.
    gone = sorted(copied_ids - still)
    await destination.index.delete_chunks(scope=scope, chunk_ids=gone)
    copied_ids.difference_update(gone)
    report.dropped += len(gone)


async def _remove_all(source: Route, scope: TenantScope, batch_size: int) -> int:
    removed = 0
    for chunks in await _pages(source, scope, batch_size):
        await source.index.delete_chunks(scope=scope, chunk_ids=[c.chunk_id for c in chunks])
        removed += len(chunks)
    return removed
