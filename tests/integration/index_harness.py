"""Both VectorIndex adapters behind one harness, for the contract and property suites.

Qdrant server is exercised through qdrant-client's local mode (no server binary exists here),
which implements the same client API; it ignores API keys and keeps no payload indexes, so
neither key enforcement nor index use is observable through it. `FACADE` runs the same adapter
over HTTP instead: qdrant-client's REST transport against `tests/qdrant_facade.py` (local
mode behind Qdrant's REST shape, in its own process), the path `bulkhead serve --workers N`
takes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.index import ChunkRecord, VectorIndex
from app.vectors.qdrant_clients import SharedClient
from app.vectors.qdrant_server import (
    CollectionNames,
    Isolation,
    QdrantServerIndex,
    ensure_collection,
)
from app.vectors.scoping import point_id

ADAPTERS = ("edge", "qdrant-shared", "qdrant-dedicated")
FACADE = "qdrant-facade"
"""The server adapter over REST, through the facade (shared isolation); needs `facade_url`."""


class InterleavingClient(AsyncQdrantClient):
    """Local mode that lets other coroutines run where a server would (a test double).

    Local mode answers every call without yielding to the event loop, so no two requests ever
    interleave; a server applies a batch's operations one by one while it serves other
    requests. This subclass yields before each query and between a batch's operations, so a
    search can land inside a half-applied batch as it could against a server; everything else is
    the real local mode.
    """

    async def query_points(self, *args: Any, **kwargs: Any) -> models.QueryResponse:
        await asyncio.sleep(0)
        return await super().query_points(*args, **kwargs)

    async def batch_update_points(
        self,
        collection_name: str,
        update_operations: Sequence[models.UpdateOperation],
        **kwargs: Any,
    ) -> list[models.UpdateResult]:
        results: list[models.UpdateResult] = []
        for operation in update_operations:
            await asyncio.sleep(0)
            results += await super().batch_update_points(collection_name, [operation], **kwargs)
        return results


@dataclass
class Harness:
    """An open index and how to onboard a tenant into it."""

    index: VectorIndex
    kind: str
    client: AsyncQdrantClient | None = None
    names: CollectionNames = field(default_factory=CollectionNames)
    isolation: dict[str, Isolation] = field(default_factory=dict)
    dense_size: int | None = None

    async def onboard(self, tenant_id: str) -> None:
        """Make the tenant's collection exist (what the key minter does at onboarding)."""
        if self.client is None:
            return
        mode: Isolation = "dedicated" if self.kind == "qdrant-dedicated" else "shared"
        self.isolation[tenant_id] = mode
        await ensure_collection(
            self.client, self.names.for_tenant(tenant_id, mode), dense_size=self.dense_size
        )


@asynccontextmanager
async def open_harness(
    kind: str, tmp: Path, *, dense_size: int | None = None, facade_url: str | None = None
) -> AsyncIterator[Harness]:
    """A fresh, empty index of `kind` (ADAPTERS, or FACADE); with `dense_size`, a dense space."""
    if kind == FACADE:
        assert facade_url, "the facade harness needs the facade's URL"
        async with _facade_harness(facade_url, dense_size) as harness:
            yield harness
        return
    if kind == "edge":
        edge = EdgeIndex.open(tmp / "edge", dense_size=dense_size)
        try:
            yield Harness(index=edge, kind=kind, dense_size=dense_size)
        finally:
            await edge.close()
        return
    client = InterleavingClient(location=":memory:")
    isolation: dict[str, Isolation] = {}
    names = CollectionNames("contract")
    index = QdrantServerIndex(
        SharedClient(client),
        isolation_of=lambda tenant_id: isolation.get(tenant_id, "shared"),
        names=names,
        dense_size=dense_size,
    )
    harness = Harness(
        index=index,
        kind=kind,
        client=client,
        names=names,
        isolation=isolation,
        dense_size=dense_size,
    )
    await ensure_collection(client, names.shared, dense_size=dense_size)
    try:
        yield harness
    finally:
        await index.close()


@asynccontextmanager
async def _facade_harness(url: str, dense_size: int | None) -> AsyncIterator[Harness]:
    client = AsyncQdrantClient(url=url)
    # One facade serves the whole session: each harness has collections of its own.
    names = CollectionNames(f"c{uuid.uuid4().hex[:12]}")
    index = QdrantServerIndex(
        SharedClient(client), isolation_of=lambda _: "shared", names=names, dense_size=dense_size
    )
    await ensure_collection(client, names.shared, dense_size=dense_size)
    try:
        yield Harness(index=index, kind=FACADE, client=client, names=names, dense_size=dense_size)
    finally:
        await client.delete_collection(names.shared)
        await index.close()


def scope(tenant_id: str, *groups: str) -> TenantScope:
    """A search-and-ingest scope of `tenant_id` with ACL `groups`."""
    return TenantScope(
        tenant_id=tenant_id,
        subject="user",
        roles=frozenset({Role.SEARCH, Role.INGEST}),
        groups=groups,
    )


def chunk(
    tenant_id: str,
    document_id: str,
    text: str,
    *,
    version: int = 1,
    index: int = 0,
    metadata: dict[str, Any] | None = None,
    acl: tuple[str, ...] | None = None,
    chunk_id: str | None = None,
    dense: list[float] | None = None,
) -> ChunkRecord:
    """A chunk with the deterministic id ingestion would give it."""
    return ChunkRecord(
        chunk_id=chunk_id or point_id(tenant_id, document_id, version, index),
        document_id=document_id,
        version=version,
        index=index,
        title=f"title {document_id}",
        section="",
        text=text,
        metadata=metadata or {},
        acl_groups=acl,
        dense=dense,
    )
