"""Qdrant Edge adapter: an in-process shard holding every tenant's chunks (isolation: shared).

Isolation lives in `scoping.forced_condition`, the one function both adapters take the filter
of every query, scroll, count and delete from (`edge_filter` only translates it to Qdrant Edge's
types); upserts stamp `tenant_id` from the scope (`chunk_payload`) and are conditional on the
same filter, so a point of another tenant can never be overwritten. Edge has one shard, so
`isolation: dedicated` is not available on it.

Re-ingestion writes a new version *pending*: its chunks carry an empty ACL list, which matches
no reader's ACL condition, so searches keep seeing the old version while the new one is
embedded and written. `publish` then reveals the new version and removes the older ones,
behind a `VersionGate` that no search crosses while the switch is half done.

BM25 ranks with the IDF modifier, its statistics counted at query time over the caller's
readable chunks only (`scoping.statistics_corpus`): another tenant's chunks never move a score.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from app.tenancy.scope import TenantScope
from app.vectors.filters import MetadataMatch
from app.vectors.gate import VersionGate
from app.vectors.index import ChunkRecord, DocumentVersion, Hit
from app.vectors.scoped import Page, ScopedIndex
from app.vectors.scoping import (
    ACL_FIELD,
    BM25_VECTOR,
    DENSE_VECTOR,
    DOCUMENT_FIELD,
    HIT_FIELDS,
    HYBRID_CANDIDATES,
    RRF_K,
    TENANT_FIELD,
    VERSION_FIELD,
    AllOf,
    AnyOf,
    Clause,
    FieldBelow,
    FieldEmpty,
    FieldEquals,
    FieldIn,
    HasId,
    bm25_text,
    chunk_payload,
    forced_condition,
    hit_from_payload,
    other_tenants,
    point_id,
    publish_plan,
    stale_pending,
    statistics_corpus,
)
from app.vectors.upkeep import VACUUM_ONLY, ShardUpkeep

__all__ = ["BM25_VECTOR", "DENSE_VECTOR", "EdgeIndex", "edge_filter"]

_FIELD_INDEXES: dict[str, Any] = {
    DOCUMENT_FIELD: qe.PayloadSchemaType.Keyword,
    ACL_FIELD: qe.PayloadSchemaType.Keyword,
    VERSION_FIELD: qe.PayloadSchemaType.Integer,
}


def edge_filter(clause: AllOf) -> qe.Filter:
    """A condition of `scoping` in Qdrant Edge's types (the adapter adds nothing to it)."""
    return qe.Filter(
        must=[_edge_clause(c) for c in clause.must] or None,
        must_not=[_edge_clause(c) for c in clause.must_not] or None,
    )


def _edge_clause(clause: Clause) -> Any:
    if isinstance(clause, FieldEquals):
        return qe.FieldCondition(clause.key, match=qe.MatchValue(clause.value))
    if isinstance(clause, FieldIn):
        values: list[str] | list[int] = list(clause.values)  # type: ignore[assignment]
        return qe.FieldCondition(clause.key, match=qe.MatchAny(values))
    if isinstance(clause, FieldBelow):
        return qe.FieldCondition(clause.key, range=qe.RangeFloat(lt=float(clause.limit)))
    if isinstance(clause, FieldEmpty):
        return qe.IsEmptyCondition(clause.key)
    if isinstance(clause, HasId):
        return qe.HasIdCondition(set(clause.ids))
    if isinstance(clause, AnyOf):
        return qe.Filter(should=[_edge_clause(c) for c in clause.should])
    return edge_filter(clause)


class EdgeIndex(ScopedIndex):
    """VectorIndex over one Qdrant Edge shard with BM25 sparse vectors (per-caller IDF).

    A shard opened with `dense_size` also holds one dense (cosine) vector per chunk; it serves
    the tenants whose embedder produces vectors of that model and size.
    """

    def __init__(self, shard: qe.EdgeShard, *, dense_size: int | None = None) -> None:
        self._shard = shard
        self.dense_size = dense_size
        self._bm25 = qe.Bm25()
        self._write_lock = asyncio.Lock()
        self._gate = VersionGate()
        # Replaced and deleted chunks are only marked deleted until the shard is optimized.
        self._upkeep = ShardUpkeep(shard, self._write_lock)

    @classmethod
    def open(
        cls, path: Path, *, search_threads: int | None = 1, dense_size: int | None = None
    ) -> EdgeIndex:
        """Open the shard at `path`, creating it (and its payload indexes) on first use.

        Args:
            path: Shard directory.
            search_threads: Threads per query; None lets the engine use one per CPU.
            dense_size: Size of the dense vector every chunk carries (None: BM25 only).
        """
        config = qe.EdgeConfig(
            vectors=(
                {DENSE_VECTOR: qe.EdgeVectorParams(dense_size, qe.Distance.Cosine)}
                if dense_size
                else None
            ),
            sparse_vectors={BM25_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            max_search_threads=search_threads,
            optimizers=VACUUM_ONLY,
        )
        if (path / "edge_config.json").exists():
            shard = qe.EdgeShard.load(str(path), config)
        else:
            path.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(path), config)
        info = shard.info()
        if TENANT_FIELD not in info.payload_schema:
            shard.update(
                qe.UpdateOperation.create_field_index(
                    TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True)
                )
            )
        for field, schema in _FIELD_INDEXES.items():
            if field not in info.payload_schema:
                shard.update(qe.UpdateOperation.create_field_index(field, schema))
        return cls(shard, dense_size=dense_size)

    @staticmethod
    def point_id(tenant_id: str, document_id: str, version: int, index: int) -> str:
        """Deterministic point id; the tenant is part of it, so ids never collide across tenants."""
        return point_id(tenant_id, document_id, version, index)

    def _vectors(self, chunk: ChunkRecord) -> dict[str, Any]:
        vectors: dict[str, Any] = {BM25_VECTOR: self._bm25.embed_document(bm25_text(chunk))}
        if self.dense_size:
            if chunk.dense is None or len(chunk.dense) != self.dense_size:
                raise ValueError(f"chunk {chunk.chunk_id}: needs a {self.dense_size}-d vector")
            vectors[DENSE_VECTOR] = chunk.dense
        return vectors

    async def upsert(
        self, *, scope: TenantScope, chunks: list[ChunkRecord], pending: bool = False
    ) -> None:
        """Index `chunks` as the scope's tenant's (BM25 embedding runs off the event loop).

        With `pending`, the chunks stay invisible to every search until `publish`, and replace
        whatever an earlier, never published attempt left at the same document version.
        """
        if not chunks:
            return
        stale = (
            [
                qe.UpdateOperation.delete_points_by_filter(edge_filter(condition))
                for condition in stale_pending(scope, chunks)
            ]
            if pending
            else []
        )

        def write() -> None:
            for operation in stale:
                self._shard.update(operation)
            points = [
                qe.Point(
                    chunk.chunk_id,
                    self._vectors(chunk),
                    chunk_payload(scope, chunk, pending=pending),
                )
                for chunk in chunks
            ]
            self._shard.update(
                qe.UpdateOperation.upsert_points(
                    points, condition=edge_filter(forced_condition(scope, reading=False))
                )
            )

        async with self._write_lock:
            await asyncio.to_thread(write)
        self._upkeep.wrote(len(chunks))

    async def search(
        self,
        *,
        scope: TenantScope,
        query: str,
        top_k: int,
        matches: tuple[MetadataMatch, ...] = (),
        dense: list[float] | None = None,
        lexical: bool = True,
    ) -> list[Hit]:
        """Top-k within the caller's tenant and ACL groups, narrowed by `matches`.

        BM25 alone; with `dense`, nearest neighbours (`lexical=False`) or both fused by RRF.
        """
        condition = edge_filter(forced_condition(scope, reading=True, matches=matches))
        bm25 = qe.Query.Nearest(self._bm25.embed_query(query), using=BM25_VECTOR)
        # IDF over the chunks the caller may read, never the whole shard (`statistics_corpus`):
        # without a metadata filter that is the search's own condition, converted once.
        statistics = qe.SearchParams(
            idf=qe.IdfParams(
                corpus=condition if not matches else edge_filter(statistics_corpus(scope))
            )
        )
        params: qe.SearchParams | None = None
        if dense is None:
            scoring: Any = bm25
            prefetches = None
            params = statistics
        elif not lexical:
            scoring, prefetches = qe.Query.Nearest(dense, using=DENSE_VECTOR), None
        else:
            # Each leg carries the scoped filter itself: isolation must not depend on whether
            # the engine propagates the outer filter into prefetches. The BM25 leg carries
            # the tenant's statistics (RRF itself only reads the legs' ranks).
            candidates = top_k * HYBRID_CANDIDATES
            prefetches = [
                qe.Prefetch(
                    candidates, query=qe.Query.Nearest(dense, using=DENSE_VECTOR), filter=condition
                ),
                qe.Prefetch(candidates, query=bm25, filter=condition, params=statistics),
            ]
            scoring = qe.Fusion.Rrf(RRF_K)
        request = qe.QueryRequest(
            limit=top_k,
            query=scoring,
            prefetches=prefetches,
            filter=condition,
            params=params,
            # Only what a hit shows: each payload field is converted from the engine per access.
            with_payload=list(HIT_FIELDS),
        )
        async with self._gate.reading():
            # Sub-millisecond at 100k chunks (see benchmarks); cheaper inline than a thread hop.
            points = self._shard.query(request)
        return [
            hit
            for point in points
            # `payload` is a property that converts on every read: read it once.
            if (hit := hit_from_payload(str(point.id), float(point.score), point.payload))
            is not None
        ]

    async def publish(self, *, scope: TenantScope, versions: list[DocumentVersion]) -> None:
        """Reveal pending document versions and remove their documents' older versions.

        All the updates run in a worker thread behind the version gate, so no search sees a
        document twice (both versions), not at all, or a batch half switched; requests other
        than searches go on meanwhile (a 1,000-chunk document takes ~20-70 ms on 2 busy cores,
        see `benchmarks/ingest.py`). The operations are `scoping.publish_plan`'s.
        """
        plan = publish_plan(scope, versions)
        operations = [
            qe.UpdateOperation.set_payload_by_filter(edge_filter(condition), {ACL_FIELD: acl})
            for condition, acl in plan.reveal
        ] + [
            qe.UpdateOperation.delete_points_by_filter(edge_filter(condition))
            for condition in plan.retire
        ]

        def switch() -> None:
            for operation in operations:
                self._shard.update(operation)

        async with self._write_lock, self._gate.switching():
            switching = asyncio.ensure_future(asyncio.to_thread(switch))
            try:
                await asyncio.shield(switching)
            except asyncio.CancelledError:
                # The thread goes on regardless: keep the gate closed until it is done.
                await switching
                raise

    async def _scroll(
        self,
        scope: TenantScope,
        condition: AllOf,
        *,
        limit: int,
        offset: str | None,
        fields: bool | list[str],
    ) -> Page:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=edge_filter(condition),
            with_payload=fields,
            with_vector=False,
        )
        records, next_offset = await asyncio.to_thread(self._shard.scroll, request)
        points = [(str(record.id), record.payload) for record in records]
        return points, str(next_offset) if next_offset is not None else None

    async def _count(self, scope: TenantScope, condition: AllOf) -> int:
        count: int = self._shard.count(qe.CountRequest(filter=edge_filter(condition)))
        return count

    async def _delete(self, scope: TenantScope, condition: AllOf) -> None:
        async with self._write_lock:
            await asyncio.to_thread(
                self._shard.update,
                qe.UpdateOperation.delete_points_by_filter(edge_filter(condition)),
            )

    async def delete_tenant(self, *, scope: TenantScope) -> int:
        """Remove every point of the scope's tenant (offboarding); returns how many there were.

        Counted without the ACL condition of reads: offboarding removes what no user can see too.
        """
        condition = edge_filter(forced_condition(scope, reading=False))
        async with self._write_lock:
            before: int = self._shard.count(qe.CountRequest(filter=condition))
            await asyncio.to_thread(
                self._shard.update, qe.UpdateOperation.delete_points_by_filter(condition)
            )
        self._upkeep.wrote(before)
        return before

    async def stored_tenants(self, *, exclude: list[str], limit: int) -> list[str]:
        """Up to `limit` tenant ids with points here, not in `exclude`.

        A facet on the tenant index: no point is read.
        """
        request = qe.FacetRequest(
            TENANT_FIELD, limit=limit, exact=True, filter=edge_filter(other_tenants(exclude))
        )
        response = await asyncio.to_thread(self._shard.facet, request)
        return [str(hit.value) for hit in response.hits]

    async def health(self) -> bool:
        """The shard answers an info call."""
        try:
            self._shard.info()
        except Exception:
            return False
        return True

    async def close(self) -> None:
        """Flush and close the shard."""
        await self._upkeep.settle()
        async with self._write_lock:
            await asyncio.to_thread(self._shard.flush)
            self._shard.close()
