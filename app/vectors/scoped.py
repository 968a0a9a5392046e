"""What both vector adapters do alike, once: every tenant-scoped read, count and delete.

Each operation here builds its condition with `forced_condition` (the one door of vector
isolation) and hands it to one of three primitives an adapter supplies: `_scroll`, `_count`,
`_delete`. The primitives receive a condition that is already scoped and only translate it to
their client's filter type, so no adapter decides what a tenant may touch. Search, upsert and
publish stay with each adapter: their requests differ in more than the filter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from app.tenancy.scope import TenantScope
from app.vectors.gate import VersionGate
from app.vectors.index import ChunkRecord
from app.vectors.scoping import (
    DOCUMENT_FIELD,
    VERSION_FIELD,
    AllOf,
    chunk_from_payload,
    forced_condition,
)

Payload = dict[str, Any] | None
Page = tuple[list[tuple[str, Payload]], str | None]
"""A page of (point id, payload) and the next page's offset (None after the last)."""


class ScopedIndex(ABC):
    """The `VectorIndex` operations that differ between adapters only in their filter type."""

    _gate: VersionGate

    @abstractmethod
    async def _scroll(
        self,
        scope: TenantScope,
        condition: AllOf,
        *,
        limit: int,
        offset: str | None,
        fields: bool | list[str],
    ) -> Page:
        """A page of the points matching `condition` (payload: all, none, or these fields)."""

    @abstractmethod
    async def _count(self, scope: TenantScope, condition: AllOf) -> int:
        """How many points match `condition`, exactly."""

    @abstractmethod
    async def _delete(self, scope: TenantScope, condition: AllOf) -> None:
        """Remove the points matching `condition`."""

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

    async def delete_chunks(self, *, scope: TenantScope, chunk_ids: list[str]) -> None:
        """Remove the tenant's chunks with these ids (another tenant's ids match nothing)."""
        if chunk_ids:
            condition = forced_condition(scope, reading=False, chunk_ids=tuple(chunk_ids))
            await self._delete(scope, condition)

    async def scroll_chunks(
        self, *, scope: TenantScope, offset: str | None, limit: int
    ) -> tuple[list[ChunkRecord], str | None]:
        """A page of the tenant's stored chunks (all ACL groups), and the next page's offset."""
        condition = forced_condition(scope, reading=False)
        points, next_offset = await self._scroll(
            scope, condition, limit=limit, offset=offset, fields=True
        )
        chunks = [
            chunk
            for point_id, payload in points
            if (chunk := chunk_from_payload(point_id, payload)) is not None
        ]
        return chunks, next_offset

    async def existing_ids(self, *, scope: TenantScope, chunk_ids: list[str]) -> set[str]:
        """Which of `chunk_ids` the tenant already has."""
        if not chunk_ids:
            return set()
        condition = forced_condition(scope, reading=False, chunk_ids=tuple(chunk_ids))
        points, _ = await self._scroll(
            scope, condition, limit=len(chunk_ids), offset=None, fields=False
        )
        return {point_id for point_id, _ in points}

    async def pending_versions(
        self, *, scope: TenantScope, offset: str | None, limit: int
    ) -> tuple[set[tuple[str, int]], str | None]:
        """(document, version) of a page of the tenant's pending points, and the next offset."""
        condition = forced_condition(scope, reading=False, pending=True)
        points, next_offset = await self._scroll(
            scope, condition, limit=limit, offset=offset, fields=[DOCUMENT_FIELD, VERSION_FIELD]
        )
        versions = {
            (str(payload[DOCUMENT_FIELD]), int(payload[VERSION_FIELD]))
            for _, payload in points
            if payload is not None
        }
        return versions, next_offset

    async def count(self, *, scope: TenantScope) -> int:
        """Chunks the scope may see."""
        async with self._gate.reading():
            return await self._count(scope, forced_condition(scope, reading=True))

    async def tenant_points(self, *, scope: TenantScope) -> int:
        """Every point stored for the scope's tenant, whatever its ACL."""
        return await self._count(scope, forced_condition(scope, reading=False))
