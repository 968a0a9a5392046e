"""The VectorIndex seam: what ingestion and search need from a vector store.

Every method takes the caller's TenantScope. Adapters derive the tenant condition from it in a
single function and never accept a tenant id from anywhere else (docs/architecture.md,
Isolation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from app.tenancy.scope import TenantScope
from app.vectors.filters import MetadataMatch

ACL_EVERYONE = "*"


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A chunk ready to be indexed."""

    chunk_id: str
    document_id: str
    version: int
    index: int
    title: str
    section: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    acl_groups: tuple[str, ...] | None = None
    """None: visible to the whole tenant."""
    dense: list[float] | None = None
    """The chunk's dense vector, for a tenant whose embedder has one (None: BM25 only)."""


@dataclass(frozen=True, slots=True)
class DocumentVersion:
    """A version of a document to publish, with the ACL its chunks get once visible."""

    document_id: str
    version: int
    acl_groups: tuple[str, ...] | None
    """None: visible to the whole tenant."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result."""

    chunk_id: str
    document_id: str
    title: str
    section: str
    text: str
    score: float
    metadata: dict[str, Any]


class VectorIndex(Protocol):
    """A tenant-isolating vector store."""

    async def upsert(
        self, *, scope: TenantScope, chunks: list[ChunkRecord], pending: bool = False
    ) -> None:
        """Index `chunks` as the scope's tenant's.

        `pending` chunks stay hidden until `publish` and replace whatever an unpublished
        earlier attempt left at the same (document, version).
        """
        ...

    async def publish(self, *, scope: TenantScope, versions: list[DocumentVersion]) -> None:
        """Reveal pending document versions and remove their documents' older versions.

        Readers must never see a document twice, nor not at all: the switch of the whole batch
        is atomic to searches.
        """
        ...

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
        """Best `top_k` chunks of the scope's tenant (and ACL groups) for `query`.

        With `dense`, the query's dense vector: nearest neighbours only when `lexical` is
        False, else dense and BM25 candidates fused with Reciprocal Rank Fusion (hybrid).
        """
        ...

    async def scroll_chunks(
        self, *, scope: TenantScope, offset: str | None, limit: int
    ) -> tuple[list[ChunkRecord], str | None]:
        """A page of the tenant's stored chunks (all ACL groups), and the next page's offset."""
        ...

    async def existing_ids(self, *, scope: TenantScope, chunk_ids: list[str]) -> set[str]:
        """Which of `chunk_ids` the tenant already has."""
        ...

    async def delete_chunks(self, *, scope: TenantScope, chunk_ids: list[str]) -> None:
        """Remove the tenant's chunks with these ids."""
        ...

    async def delete_document(
        self,
        *,
        scope: TenantScope,
        document_id: str,
        version: int | None = None,
        keep_version: int | None = None,
    ) -> None:
        """Remove a document's chunks: all, only `version`'s, or all but `keep_version`'s."""
        ...

    async def count(self, *, scope: TenantScope) -> int:
        """Chunks the scope may see."""
        ...

    async def delete_tenant(self, *, scope: TenantScope) -> int:
        """Remove every point of the scope's tenant, whatever its ACL; returns how many."""
        ...

    async def tenant_points(self, *, scope: TenantScope) -> int:
        """Every point stored for the scope's tenant, whatever its ACL."""
        ...

    async def pending_versions(
        self, *, scope: TenantScope, offset: str | None, limit: int
    ) -> tuple[set[tuple[str, int]], str | None]:
        """(document id, version) of a page of the tenant's pending points, and the next offset.

        A page holds at most `limit` points, so a version may show on several pages.
        """
        ...

    async def stored_tenants(self, *, exclude: list[str], limit: int) -> list[str] | None:
        """Up to `limit` tenant ids that have points here and are not in `exclude`.

        None: this store cannot list them cheaply (see the adapter).
        """
        ...

    async def health(self) -> bool:
        """Whether the store answers."""
        ...

    async def close(self) -> None:
        """Release the store."""
        ...
