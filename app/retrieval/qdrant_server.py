"""Qdrant server adapter: qdrant-client's `AsyncQdrantClient` against a server or cluster.

The condition of every query, count, delete and conditional upsert is `forced_condition`
(shared with the Edge adapter) translated to qdrant-client's models by `_client_filter`; BM25
sparse vectors come from the same `qdrant_edge.Bm25` encoder with the same IDF modifier, so both
adapters score alike. `isolation: shared` tenants live in one collection; `isolation: dedicated`
tenants in their own, where the forced filter still applies (defence in depth).

Each tenant's requests go through the client `TenantClients.for_scope` hands out: in server mode,
one built with the tenant's scoped JWT (see `qdrant_keys`), never the cluster key.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient, models

from app.retrieval.filters import MetadataMatch
from app.retrieval.index import ChunkRecord, Hit
from app.retrieval.scoping import (
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
    FieldEquals,
    FieldIn,
    HasId,
    bm25_text,
    chunk_from_payload,
    chunk_payload,
    forced_condition,
    hit_from_payload,
)
from app.tenancy.scope import TenantScope

T = TypeVar("T")
Isolation = Literal["shared", "dedicated"]
IsolationOf = Callable[[str], Isolation]
"""Tenant id -> the isolation its manifest asks for."""

_FIELD_INDEXES: dict[str, models.PayloadSchemaType] = {
    DOCUMENT_FIELD: models.PayloadSchemaType.KEYWORD,
    ACL_FIELD: models.PayloadSchemaType.KEYWORD,
    VERSION_FIELD: models.PayloadSchemaType.INTEGER,
}


@dataclass(frozen=True, slots=True)
class CollectionNames:
    """Where a tenant's points live; `keys` holds the JWT revocation records."""

    prefix: str = "bulkhead"

    @property
    def shared(self) -> str:
        """The collection of every `isolation: shared` tenant."""
        return f"{self.prefix}_shared"

    @property
    def keys(self) -> str:
        """Bulkhead-owned revocation records; no tenant key can reach it."""
        return f"{self.prefix}_keys"

    def dedicated(self, tenant_id: str) -> str:
        """The collection of an `isolation: dedicated` tenant."""
        return f"{self.prefix}_t_{tenant_id}"

    def for_tenant(self, tenant_id: str, isolation: Isolation) -> str:
        """The collection a tenant's points live in."""
        return self.dedicated(tenant_id) if isolation == "dedicated" else self.shared


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


async def ensure_collection(
    client: AsyncQdrantClient, name: str, *, dense_size: int | None = None
) -> bool:
    """Create a chunk collection with its BM25 vector and payload indexes; True if created.

    With `dense_size`, every point also carries a named cosine vector of that size.
    Needs manage access (the cluster key): tenant keys carry `prw`, which excludes indexes.
    """
    if await client.collection_exists(name):
        return False
    dense: dict[str, models.VectorParams] = {}
    if dense_size:
        dense[DENSE_VECTOR] = models.VectorParams(size=dense_size, distance=models.Distance.COSINE)
    await client.create_collection(
        name,
        vectors_config=dense,
        sparse_vectors_config={
            BM25_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
        },
    )
    with warnings.catch_warnings():
        # Local mode (tests, dev) keeps no payload indexes and says so; a server does.
        warnings.filterwarnings("ignore", message="Payload indexes have no effect")
        await client.create_payload_index(
            name,
            TENANT_FIELD,
            models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        )
        for field, schema in _FIELD_INDEXES.items():
            await client.create_payload_index(name, field, schema)
    return True


class QdrantServerIndex:
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

    def collection(self, scope: TenantScope) -> str:
        """The collection holding `scope`'s tenant's points."""
        return self._names.for_tenant(scope.tenant_id, self._isolation_of(scope.tenant_id))

    async def provisioned(self, scope: TenantScope) -> bool:
        """Whether the scope's tenant's collection exists (onboarding has run)."""
        collection = self.collection(scope)
        return await self._clients.run(scope, lambda client: client.collection_exists(collection))

    def _point(self, scope: TenantScope, chunk: ChunkRecord) -> models.PointStruct:
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
            id=chunk.chunk_id, vector=vectors, payload=chunk_payload(scope, chunk)
        )

    async def upsert(self, *, scope: TenantScope, chunks: list[ChunkRecord]) -> None:
        """Index `chunks` as the scope's tenant's; an existing point of another tenant is kept."""
        if not chunks:
            return
        collection = self.collection(scope)
        points = [self._point(scope, chunk) for chunk in chunks]
        condition = _client_filter(forced_condition(scope, reading=False))
        await self._clients.run(
            scope, lambda client: client.upsert(collection, points, update_filter=condition)
        )

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
        request: dict[str, Any]
        if dense is None:
            request = {"query": bm25, "using": BM25_VECTOR}
        elif not lexical:
            request = {"query": list(dense), "using": DENSE_VECTOR}
        else:
            # Each leg carries the forced filter itself: isolation must not depend on whether
            # the server propagates the outer filter into prefetches.
            candidates = top_k * HYBRID_CANDIDATES
            request = {
                "prefetch": [
                    models.Prefetch(
                        query=list(dense), using=DENSE_VECTOR, filter=condition, limit=candidates
                    ),
                    models.Prefetch(
                        query=bm25, using=BM25_VECTOR, filter=condition, limit=candidates
                    ),
                ],
                "query": models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
            }
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

    async def delete_document(
        self,
        *,
        scope: TenantScope,
        document_id: str,
        version: int | None = None,
        keep_version: int | None = None,
    ) -> None:
        """Remove a document's chunks: all, only `version`'s, or all but `keep_version`'s."""
        condition = forced_condition(
            scope,
            reading=False,
            document_id=document_id,
            version=version,
            except_version=keep_version,
        )
        await self._delete(scope, condition)

    async def _delete(self, scope: TenantScope, condition: AllOf) -> None:
        collection = self.collection(scope)
        selector = models.FilterSelector(filter=_client_filter(condition))
        await self._clients.run(
            scope, lambda client: client.delete(collection, points_selector=selector)
        )

    async def scroll_chunks(
        self, *, scope: TenantScope, offset: str | None, limit: int
    ) -> tuple[list[ChunkRecord], str | None]:
        """A page of the tenant's stored chunks (all ACL groups), and the next page's offset."""
        collection = self.collection(scope)
        condition = _client_filter(forced_condition(scope, reading=False))
        records, next_offset = await self._clients.run(
            scope,
            lambda client: client.scroll(
                collection,
                scroll_filter=condition,
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            ),
        )
        chunks = [
            chunk
            for record in records
            if (chunk := chunk_from_payload(str(record.id), record.payload)) is not None
        ]
        return chunks, str(next_offset) if next_offset is not None else None

    async def existing_ids(self, *, scope: TenantScope, chunk_ids: list[str]) -> set[str]:
        """Which of `chunk_ids` the tenant already has."""
        if not chunk_ids:
            return set()
        collection = self.collection(scope)
        condition = _client_filter(
            forced_condition(scope, reading=False, chunk_ids=tuple(chunk_ids))
        )
        records, _ = await self._clients.run(
            scope,
            lambda client: client.scroll(
                collection,
                scroll_filter=condition,
                limit=len(chunk_ids),
                with_payload=False,
                with_vectors=False,
            ),
        )
        return {str(record.id) for record in records}

    async def delete_chunks(self, *, scope: TenantScope, chunk_ids: list[str]) -> None:
        """Remove the tenant's chunks with these ids (another tenant's ids match nothing)."""
        if chunk_ids:
            await self._delete(
                scope, forced_condition(scope, reading=False, chunk_ids=tuple(chunk_ids))
            )

    async def delete_tenant(self, *, scope: TenantScope) -> int:
        """Remove every point of the scope's tenant (offboarding); returns how many there were.

        Counted without the ACL condition of reads: offboarding removes what no user can see too.
        """
        before = await self.tenant_points(scope=scope)
        await self._delete(scope, forced_condition(scope, reading=False))
        return before

    async def tenant_points(self, *, scope: TenantScope) -> int:
        """Every point stored for the scope's tenant, whatever its ACL."""
        return await self._count(scope, forced_condition(scope, reading=False))

    async def _count(self, scope: TenantScope, condition: AllOf) -> int:
        collection = self.collection(scope)
        count_filter = _client_filter(condition)
        result = await self._clients.run(
            scope, lambda client: client.count(collection, count_filter=count_filter, exact=True)
        )
        return result.count

    async def count(self, *, scope: TenantScope) -> int:
        """Chunks the scope may see."""
        return await self._count(scope, forced_condition(scope, reading=True))

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
    if isinstance(clause, HasId):
        return models.HasIdCondition(has_id=list(clause.ids))
    if isinstance(clause, AnyOf):
        return models.Filter(should=[_client_clause(c) for c in clause.should])
    return _client_filter(clause)
