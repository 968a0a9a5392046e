"""Reconcile the vector store with Postgres after a crash (run at start-up and by operators).

Two gaps a crash can leave:

- An ingest that committed its rows but died before `publish`: the committed version stays
  pending (hidden) and the previous one visible. Every pending version the index holds is
  decided under the document's ingest lock (`repository.lock_committed`, in a tenant
  transaction as the runtime role, RLS armed): the committed version is published with the
  same `publish` ingestion uses; any other version (an ingest that never committed, or an
  older leftover) is deleted. Holding the lock means a live ingest is never overtaken: its
  pending version either has its row by then, or is not written yet.
- A tenant offboarded while no service ran (or before the purge hook did): its points stay in
  the shards. Tenant ids with points but no `tenants` row are found by a facet on the tenant
  index, checked once more against the table just before, and deleted by exact id from every
  vector space.

Work is bounded: pending points are read a page at a time, orphan tenants a batch at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

from app.db.pool import platform_transaction, tenant_transaction
from app.retrieval import repository
from app.tenancy.scope import TenantScope
from app.vectors.index import DocumentVersion, VectorIndex
from app.vectors.spaces import VectorSpaces

_log = logging.getLogger(__name__)

SUBJECT = "bulkhead:reconcile"


@dataclass(slots=True)
class ReconcileReport:
    """What a pass did."""

    published: int = 0
    """Committed versions that were still pending, now published."""
    discarded: int = 0
    """Pending versions without their row (never committed, or superseded), deleted."""
    orphan_tenants: list[str] = field(default_factory=list)
    """Tenant ids with points but no row, whose points were deleted."""
    orphan_points: int = 0
    failed: list[str] = field(default_factory=list)
    """Tenants whose pending versions could not be read or settled (logged; retried next pass)."""
    orphans_unchecked: bool = False
    """True: the store cannot list tenant ids (Qdrant server adapter), orphans not swept."""


async def reconcile(
    pool: asyncpg.Pool,
    spaces: VectorSpaces,
    *,
    tenant_id: str | None = None,
    batch_size: int = 256,
) -> ReconcileReport:
    """One pass over every vector space (or only `tenant_id`'s points in them).

    A `tenant_id` that has a row gets its pending versions reconciled; one without a row has
    its points deleted.
    """
    report = ReconcileReport()
    known = await _existing(pool, None if tenant_id is None else [tenant_id])
    for index in spaces.stored():
        for existing in sorted(known):
            try:
                await _reconcile_pending(pool, index, _scope(existing), batch_size, report)
            except Exception:
                # One tenant's store (e.g. a collection not provisioned) must not stop the rest.
                _log.exception("vector reconcile: tenant %r failed", existing)
                report.failed.append(existing)
    if tenant_id is not None:
        if tenant_id not in known:
            await _delete_orphans(pool, spaces, [tenant_id], report)
        return report
    for index in spaces.stored():
        await _sweep_orphans(pool, spaces, index, sorted(known), batch_size, report)
    return report


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope.system(tenant_id, actor=SUBJECT)


async def _existing(pool: asyncpg.Pool, tenant_ids: list[str] | None) -> set[str]:
    """Tenant ids with a `tenants` row (all of them, or those among `tenant_ids`)."""
    async with platform_transaction(pool) as connection:
        rows = await connection.fetch(
            "SELECT id FROM tenants WHERE $1::text[] IS NULL OR id = ANY($1::text[])", tenant_ids
        )
    return {row["id"] for row in rows}


async def _reconcile_pending(
    pool: asyncpg.Pool,
    index: VectorIndex,
    scope: TenantScope,
    batch_size: int,
    report: ReconcileReport,
) -> None:
    offset: str | None = None
    while True:
        versions, offset = await index.pending_versions(
            scope=scope, offset=offset, limit=batch_size
        )
        if versions:
            await _settle(pool, index, scope, versions, report)
        if offset is None:
            return


async def _settle(
    pool: asyncpg.Pool,
    index: VectorIndex,
    scope: TenantScope,
    versions: set[tuple[str, int]],
    report: ReconcileReport,
) -> None:
    """Publish the committed ones among pending `versions`, delete the others (under lock)."""
    async with tenant_transaction(pool, scope=scope) as connection:
        committed = await repository.lock_committed(
            connection, sorted({document_id for document_id, _ in versions})
        )
        publish: list[DocumentVersion] = []
        for document_id, version in sorted(versions):
            row = committed.get(document_id)
            if row is not None and row[0] == version:
                groups = tuple(row[1]) if row[1] is not None else None
                publish.append(DocumentVersion(document_id, version, groups))
            else:
                await index.delete_document(scope=scope, document_id=document_id, version=version)
                report.discarded += 1
        if publish:
            await index.publish(scope=scope, versions=publish)
            report.published += len(publish)


async def _sweep_orphans(
    pool: asyncpg.Pool,
    spaces: VectorSpaces,
    index: VectorIndex,
    known: list[str],
    batch_size: int,
    report: ReconcileReport,
) -> None:
    exclude = list(known)
    while True:
        candidates = await index.stored_tenants(exclude=exclude, limit=batch_size)
        if candidates is None:
            report.orphans_unchecked = True
            return
        if not candidates:
            return
        # Each candidate once a pass: one onboarded since `known` was read is skipped.
        await _delete_orphans(pool, spaces, candidates, report)
        exclude += candidates


async def _delete_orphans(
    pool: asyncpg.Pool, spaces: VectorSpaces, candidates: list[str], report: ReconcileReport
) -> None:
    """Delete the points of the `candidates` that have no row (checked again just now)."""
    existing = await _existing(pool, candidates)
    for tenant_id in candidates:
        if tenant_id in existing:
            continue
        deleted = await spaces.delete_tenant(scope=_scope(tenant_id))
        if deleted:
            report.orphan_tenants.append(tenant_id)
            report.orphan_points += deleted


async def reconcile_at_start(pool: asyncpg.Pool, spaces: VectorSpaces) -> ReconcileReport | None:
    """The start-up pass: logs its counts; a failure is logged, never raised (None)."""
    try:
        report = await reconcile(pool, spaces)
    except Exception:
        _log.exception("vector reconcile failed; run `bulkhead vectors reconcile`")
        return None
    _log.info(
        "vector reconcile: %d pending versions published, %d discarded, "
        "%d points of %d removed tenants deleted, %d tenants failed%s",
        report.published,
        report.discarded,
        report.orphan_points,
        len(report.orphan_tenants),
        len(report.failed),
        " (orphans not checked: server backend)" if report.orphans_unchecked else "",
    )
    return report
