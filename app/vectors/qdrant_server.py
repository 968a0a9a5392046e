"""Qdrant server adapter: qdrant-client's `AsyncQdrantClient` against a server or cluster.

The condition of every query, count, delete and conditional upsert is `forced_condition`
(shared with the Edge adapter) translated to qdrant-client's models by `_client_filter`; BM25
sparse vectors come from the same `qdrant_edge.Bm25` encoder with the same IDF modifier, so both
adapters score alike. `isolation: shared` tenants live in one collection, where the statistics
are counted over the caller's readable chunks only (`scoping.statistics_corpus`), so no tenant's
chunks move another's scores; `isolation: dedicated` tenants in their own, where the forced
filter still applies (defence in depth) and the collection's statistics are the tenant's.

Each tenant's requests go through the client `TenantClients.for_scope` hands out: in server mode,
one built with the tenant's scoped JWT (see `qdrant_keys`), never the cluster key.

Re-ingestion works as on Edge: a new version is upserted *pending* (`scoping.PENDING_ACL`, which
no reader's ACL clause matches) and `publish` reveals it and retires older versions in one
batched request, behind a `VersionGate` so that no search of this process sees a half-done
switch. The gate is per process: with several replicas against one server, a search in another
replica can still land between the reveal and the retire (a document briefly seen in two
versions); that needs another mechanism (e.g. version-aware search or a shared lock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient, models

from app.tenancy.scope import TenantScope
from app.vectors.filters import MetadataMatch
from app.vectors.gate import VersionGate
from app.vectors.index import ChunkRecord, DocumentVersion, Hit
from app.vectors.qdrant_collections import (
    CollectionNames,
    Isolation,
    IsolationOf,
    ensure_collection,
)
from app.vectors.scoped import Page, ScopedIndex
from app.vectors.scoping import (
    ACL_FIELD,
    BM25_VECTOR,
    DENSE_VECTOR,
    HIT_FIELDS,
    HYBRID_CANDIDATES,
    RRF_K,
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
    publish_plan,
    stale_pending,
    statistics_corpus,
)

__all__ = [
    "CollectionNames",
    "Isolation",
    "IsolationOf",
    "QdrantServerIndex",
    "TenantClients",
    "ensure_collection",
]

T = TypeVar("T")


class TenantClients(Protocol):
    """Hands out the client a scope's requests go through."""

    async def for_scope(self, scope: TenantScope) -> AsyncQdrantClient:
        """The client for `scope`'s tenant (its scoped key in server mode)."""
        ...

    async def run(self, scope: TenantScope, call: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        """`call` with the scope's client (retried once with a newer key if refused)."""
        ...

    async def health(self) -> bool:
        """Whether the server answers."""
        ...

    async def close(self) -> None:
        """Close every client handed out."""
        ...


class QdrantServerIndex(ScopedIndex):
    """VectorIndex over a Qdrant server (or qdrant-client's local mode in tests and dev).

    An index made with `dense_size` expects collections created with the same size
    (`ensure_collection(..., dense_size=)`) and a dense vector on every chunk.
    """

    def __init__(
        self,
        clients: TenantClients,
        *,
        isolation_of: IsolationOf,
        names: CollectionNames | None = None,
        dense_size: int | None = None,
    ) -> None:
        self._clients = clients
        self._isolation_of = isolation_of
        self._names = names or CollectionNames()
        self._bm25 = qe.Bm25()
        self.dense_size = dense_size
        self._gate = VersionGate()

    def collection(self, scope: TenantScope) -> str:
        """The collection holding `scope`'s tenant's points."""
        return self._names.for_tenant(scope.tenant_id, self._isolation_of(scope.tenant_id))

    async def provisioned(self, scope: TenantScope) -> bool:
        """Whether the scope's tenant's collection exists (onboarding has run)."""
        collection = self.collection(scope)
        return await self._clients.run(scope, lambda client: client.collection_exists(collection))

    def _point(
        self, scope: TenantScope, chunk: ChunkRecord, *, pending: bool
    ) -> models.PointStruct:
        sparse = self._bm25.embed_document(bm25_text(chunk))
        vectors: dict[str, Any] = {
            BM25_VECTOR: models.SparseVector(
                indices=list(sparse.indices), values=list(sparse.values)
            )
        }
        if self.dense_size:
            if chunk.dense is None or len(chunk.dense) != self.dense_size:
                raise ValueError(f"chunk {chunk.chunk_id}: needs a {self.dense_size}-d vector")
            vectors[DENSE_VECTOR] = list(chunk.dense)
        return models.PointStruct(
            id=chunk.chunk_id, vector=vectors, payload=chunk_payload(scope, chunk, pending=pending)
        )

    async def upsert(
        self, *, scope: TenantScope, chunks: list[ChunkRecord], pending: bool = False
    ) -> None:
        """Index `chunks` as the scope's tenant's; an existing point of another tenant is kept.

        With `pending`, the chunks stay invisible to every search until `publish`, and replace
        whatever an earlier, never published attempt left at the same document version (deleted
        first, in the same batched request).
        """
        if not chunks:
            return
        collection = self.collection(scope)
        points = [self._point(scope, chunk, pending=pending) for chunk in chunks]
        operations: list[models.UpdateOperation] = [
            models.DeleteOperation(delete=models.FilterSelector(filter=_client_filter(condition)))
            for condition in (stale_pending(scope, chunks) if pending else [])
        ]
        operations.append(
            models.UpsertOperation(
                upsert=models.PointsList(
                    points=points,
                    update_filter=_client_filter(forced_condition(scope, reading=False)),
                )
            )
        )
        await self._clients.run(
            scope, lambda client: client.batch_update_points(collection, operations)
        )

    async def publish(self, *, scope: TenantScope, versions: list[DocumentVersion]) -> None:
        """Reveal pending document versions and remove their documents' older versions.

        One batched request (`scoping.publish_plan`'s operations, applied in order) behind the
        version gate, so no search of this process sees a document twice, not at all, or a batch
        half switched. The gate is per process (see the module docstring).
        """
        if not versions:
            return
        collection = self.collection(scope)
        plan = publish_plan(scope, versions)
        operations: Sequence[models.UpdateOperation] = [
            models.SetPayloadOperation(
                set_payload=models.SetPayload(payload={ACL_FIELD: acl}, filter=_client_filter(c))
            )
            for c, acl in plan.reveal
        ] + [
            models.DeleteOperation(delete=models.FilterSelector(filter=_client_filter(c)))
            for c in plan.retire
        ]
        async with self._gate.switching():
            switching = asyncio.ensure_future(
                self._clients.run(
                    scope, lambda client: client.batch_update_points(collection, operations)
                )
            )
            try:
                await asyncio.shield(switching)
            except asyncio.CancelledError:
                # The server applies a sent request regardless: keep the gate closed until the
                # answer is in.
                await asyncio.gather(switching, return_exceptions=True)
                raise

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

        BM25 alone; with `dense`, nearest neighbours (`lexical=False`) or both fused by RRF
        through the Query API's prefetches.
        """
        sparse = self._bm25.embed_query(query)
        collection = self.collection(scope)
        bm25 = models.SparseVector(indices=list(sparse.indices), values=list(sparse.values))
        condition = _client_filter(forced_condition(scope, reading=True, matches=matches))
        statistics = self._statistics(scope, condition if not matches else None)
        request: dict[str, Any]
        if dense is None:
            request = {"query": bm25, "using": BM25_VECTOR, "search_params": statistics}
        elif not lexical:
            request = {"query": list(dense), "using": DENSE_VECTOR}
        else:
            # Each leg carries the forced filter itself: isolation must not depend on whether
            # the server propagates the outer filter into prefetches. The BM25 leg carries the
            # tenant's statistics (RRF itself only reads the legs' ranks).
            candidates = top_k * HYBRID_CANDIDATES
            request = {
                "prefetch": [
                    models.Prefetch(
                        query=list(dense), using=DENSE_VECTOR, filter=condition, limit=candidates
                    ),
                    models.Prefetch(
                        query=bm25,
                        using=BM25_VECTOR,
                        filter=condition,
                        params=statistics,
                        limit=candidates,
                    ),
                ],
                "query": models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
            }
        async with self._gate.reading():
            response = await self._clients.run(
                scope,
                lambda client: client.query_points(
                    collection,
                    query_filter=condition,
                    limit=top_k,
                    with_payload=list(HIT_FIELDS),
                    **request,
                ),
            )
        return [
            hit
            for point in response.points
            if (hit := hit_from_payload(str(point.id), float(point.score), point.payload))
            is not None
        ]

    def _statistics(
        self, scope: TenantScope, reading: models.Filter | None
    ) -> models.SearchParams | None:
        """The IDF corpus of a BM25 search: the chunks the caller may read (`statistics_corpus`).

        `reading`: that condition already converted, if the search has no metadata filter.
        None in a dedicated collection, left as it was: its statistics are the tenant's already,
        and a corpus costs query time in proportion to the tenant's size (see docs/vectors.md).
        """
        if self._isolation_of(scope.tenant_id) == "dedicated":
            return None
        corpus = reading if reading is not None else _client_filter(statistics_corpus(scope))
        return models.SearchParams(idf=models.IdfCorpusParams(corpus=corpus))

    async def _scroll(
        self,
        scope: TenantScope,
        condition: AllOf,
        *,
        limit: int,
        offset: str | None,
        fields: bool | list[str],
    ) -> Page:
        collection = self.collection(scope)
        scroll_filter = _client_filter(condition)
        records, next_offset = await self._clients.run(
            scope,
            lambda client: client.scroll(
                collection,
                scroll_filter=scroll_filter,
                limit=limit,
                offset=offset,
                with_payload=fields,
                with_vectors=False,
            ),
        )
        points = [(str(record.id), record.payload) for record in records]
        return points, str(next_offset) if next_offset is not None else None

    async def _count(self, scope: TenantScope, condition: AllOf) -> int:
        collection = self.collection(scope)
        count_filter = _client_filter(condition)
        result = await self._clients.run(
            scope, lambda client: client.count(collection, count_filter=count_filter, exact=True)
        )
        return result.count

    async def _delete(self, scope: TenantScope, condition: AllOf) -> None:
        collection = self.collection(scope)
        selector = models.FilterSelector(filter=_client_filter(condition))
        await self._clients.run(
            scope, lambda client: client.delete(collection, points_selector=selector)
        )

    async def delete_tenant(self, *, scope: TenantScope) -> int:
        """Remove every point of the scope's tenant (offboarding); returns how many there were.

        Counted without the ACL condition of reads: offboarding removes what no user can see too.
        """
        before = await self.tenant_points(scope=scope)
        await self._delete(scope, forced_condition(scope, reading=False))
        return before

    async def stored_tenants(self, *, exclude: list[str], limit: int) -> list[str] | None:
        """None: not listed here.

        Every request goes through a tenant's scoped key, and a removed tenant has none (its
        dedicated collection, or its points in the shared one, need the cluster key).
        """
        return None

    async def health(self) -> bool:
        """The server answers."""
        return await self._clients.health()

    async def close(self) -> None:
        """Close the clients."""
        await self._clients.close()


def _client_filter(clause: AllOf) -> models.Filter:
    return models.Filter(
        must=[_client_clause(c) for c in clause.must] or None,
        must_not=[_client_clause(c) for c in clause.must_not] or None,
    )


def _client_clause(clause: Clause) -> models.Condition:
    if isinstance(clause, FieldEquals):
        return models.FieldCondition(key=clause.key, match=models.MatchValue(value=clause.value))
    if isinstance(clause, FieldIn):
        return models.FieldCondition(key=clause.key, match=models.MatchAny(any=list(clause.values)))
    if isinstance(clause, FieldBelow):
        return models.FieldCondition(key=clause.key, range=models.Range(lt=clause.limit))
    if isinstance(clause, FieldEmpty):
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=clause.key))
    if isinstance(clause, HasId):
        return models.HasIdCondition(has_id=list(clause.ids))
    if isinstance(clause, AnyOf):
        return models.Filter(should=[_client_clause(c) for c in clause.should])
    return _client_filter(clause)
