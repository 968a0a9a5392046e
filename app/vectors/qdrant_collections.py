"""Qdrant server collections: where each tenant's points live, and how a collection is made."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import grpc
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from app.vectors.scoping import (
    ACL_FIELD,
    BM25_VECTOR,
    DENSE_VECTOR,
    DOCUMENT_FIELD,
    TENANT_FIELD,
    VERSION_FIELD,
)

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
    created = await create_collection_once(
        client,
        name,
        vectors_config=dense,
        sparse_vectors_config={
            BM25_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
        },
    )
    if not created:
        return False
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


async def create_collection_once(client: AsyncQdrantClient, name: str, **config: Any) -> bool:
    """Create a collection; False if another process created it first.

    Workers of one `serve --workers N`, or replicas, start together and each makes the
    collections it finds missing: the loser of that race gets Qdrant's "already exists" (409,
    gRPC `ALREADY_EXISTS`), which here means the work is done. The winner makes the indexes.

    Raises:
        UnexpectedResponse: The server refused the collection otherwise.
    """
    try:
        await client.create_collection(name, **config)
    except UnexpectedResponse as exc:
        if exc.status_code != HTTPStatus.CONFLICT:
            raise
        return False
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        return False
    return True


MIN_SERVER_VERSION = (1, 19)
"""The first Qdrant release that honours `SearchParams.idf` (an IDF corpus narrowed by a filter)."""


class QdrantServerTooOld(RuntimeError):
    """The server would ignore the per-tenant IDF corpus: collection-wide statistics."""


async def require_tenant_statistics(client: AsyncQdrantClient) -> str:
    """Check that the server computes BM25 statistics over a tenant's points; its version.

    An older server ignores the unknown `idf` search parameter instead of refusing it (gRPC
    drops unknown fields), so it would rank every shared tenant with statistics over the whole
    collection: the leak `scoping.statistics_corpus` closes. Better not to start.

    Raises:
        QdrantServerTooOld: The server is older than `MIN_SERVER_VERSION`, or its version
            cannot be read.
    """
    version = (await client.info()).version
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if len(found) < len(MIN_SERVER_VERSION) or found < MIN_SERVER_VERSION:
        needed = ".".join(map(str, MIN_SERVER_VERSION))
        raise QdrantServerTooOld(
            f"Qdrant server {version!r}: Bulkhead needs Qdrant >= {needed}, which computes BM25"
            " statistics over each tenant's own points (per-tenant IDF); an older server would"
            " rank every shared tenant with statistics of the whole collection"
        )
    return version
