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
from typing import Literal, Protocol, TypeVar

import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient, models

from app.retrieval.filters import MetadataMatch
from app.retrieval.index import ChunkRecord, Hit
from app.retrieval.scoping import (
    ACL_FIELD,
    DOCUMENT_FIELD,
    HIT_FIELDS,
    METADATA_FIELD,
    TENANT_FIELD,
    VERSION_FIELD,
    AllOf,
    AnyOf,
    Clause,
    FieldEquals,
    FieldIn,
    bm25_text,
    chunk_payload,
    forced_condition,
)
from app.tenancy.scope import TenantScope

BM25_VECTOR = "bm25"
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


async def ensure_collection(client: AsyncQdrantClient, name: str) -> bool:
    """Create a chunk collection with its BM25 vector and payload indexes; True if created.

    Needs manage access (the cluster key): tenant keys carry `prw`, which excludes indexes.
    """
    if await client.collection_exists(name):
        return False
    await client.create_collection(
        name,
        vectors_config={},
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
    """VectorIndex over a Qdrant server (or qdrant-client's local mode in tests and dev)."""

    def __init__(
        self,
        clients: TenantClients,
        *,
        isolation_of: IsolationOf,
        names: CollectionNames | None = None,
    ) -> None:
        self._clients = clients
        self._isolation_of = isolation_of
        self._names = names or CollectionNames()
        self._bm25 = qe.Bm25()

    def collection(self, scope: TenantScope) -> str:
        """The collection holding `scope`'s tenant's points."""
        return self._names.for_tenant(scope.tenant_id, self._isolation_of(scope.tenant_id))

    async def provisioned(self, scope: TenantScope) -> bool:
        """Whether the scope's tenant's collection exists (onboarding has run)."""
        collection = self.collection(scope)
        return await self._clients.run(scope, lambda client: client.collection_exists(collection))

    def _point(self, scope: TenantScope, chunk: ChunkRecord) -> models.PointStruct:
        sparse = self._bm25.embed_document(bm25_text(chunk))
        return models.PointStruct(
            id=chunk.chunk_id,
            vector={
                BM25_VECTOR: models.SparseVector(
                    indices=list(sparse.indices), values=list(sparse.values)
                )
            },
            payload=chunk_payload(scope, chunk),
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
    ) -> list[Hit]:
        """BM25 top-k within the caller's tenant and ACL groups, narrowed by `matches`."""
        sparse = self._bm25.embed_query(query)
        collection = self.collection(scope)
        vector = models.SparseVector(indices=list(sparse.indices), values=list(sparse.values))
        condition = _client_filter(forced_condition(scope, reading=True, matches=matches))
        response = await self._clients.run(
            scope,
            lambda client: client.query_points(
                collection,
                query=vector,
                using=BM25_VECTOR,
                query_filter=condition,
                limit=top_k,
                with_payload=list(HIT_FIELDS),
            ),
        )
        return [hit for point in response.points if (hit := _hit(point)) is not None]

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
        collection = self.collection(scope)
        selector = models.FilterSelector(filter=_client_filter(condition))
        await self._clients.run(
            scope, lambda client: client.delete(collection, points_selector=selector)
        )

    async def count(self, *, scope: TenantScope) -> int:
        """Chunks the scope may see."""
        collection = self.collection(scope)
        condition = _client_filter(forced_condition(scope, reading=True))
        result = await self._clients.run(
            scope, lambda client: client.count(collection, count_filter=condition, exact=True)
        )
        return result.count

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
    if isinstance(clause, AnyOf):
        return models.Filter(should=[_client_clause(c) for c in clause.should])
    return _client_filter(clause)


def _hit(point: models.ScoredPoint) -> Hit | None:
    payload = point.payload
    if payload is None:
        return None
    return Hit(
        chunk_id=str(point.id),
        document_id=payload[DOCUMENT_FIELD],
        title=payload.get("title", ""),
        section=payload.get("section", ""),
        text=payload.get("text", ""),
        score=float(point.score),
        metadata=payload.get(METADATA_FIELD) or {},
    )
