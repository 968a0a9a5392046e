"""SQL for the `documents` table. Every function runs inside a tenant transaction (RLS)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.db.pool import Connection


@dataclass(frozen=True, slots=True)
class DocumentRow:
    """A stored document (its text lives only in the vector store, chunked)."""

    id: str
    title: str
    metadata: dict[str, Any]
    acl_groups: list[str] | None
    chunk_count: int
    version: int
    created_at: datetime
    updated_at: datetime


_COLUMNS = "id, title, metadata, acl_groups, chunk_count, version, created_at, updated_at"


async def current_version(connection: Connection, document_id: str) -> int | None:
    """The stored version of a document, locking its row until the transaction ends."""
    value: int | None = await connection.fetchval(
        "SELECT version FROM documents WHERE id = $1 FOR UPDATE", document_id
    )
    return value


async def save(
    connection: Connection,
    *,
    tenant_id: str,
    document_id: str,
    title: str,
    metadata: dict[str, Any],
    acl_groups: list[str] | None,
    chunk_count: int,
    content_sha256: str,
    version: int,
    created_by: str,
) -> None:
    """Insert a document or replace it with a new version."""
    await connection.execute(
        """
        INSERT INTO documents (tenant_id, id, title, metadata, acl_groups, chunk_count,
                               content_sha256, version, created_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (tenant_id, id) DO UPDATE SET
            title = EXCLUDED.title, metadata = EXCLUDED.metadata,
            acl_groups = EXCLUDED.acl_groups, chunk_count = EXCLUDED.chunk_count,
            content_sha256 = EXCLUDED.content_sha256, version = EXCLUDED.version,
            updated_at = now()
        """,
        tenant_id,
        document_id,
        title,
        metadata,
        acl_groups,
        chunk_count,
        content_sha256,
        version,
        created_by,
    )


async def page(
    connection: Connection, *, after: str | None, limit: int, groups: tuple[str, ...]
) -> list[DocumentRow]:
    """Documents ordered by id, after the cursor, that the caller's groups may see."""
    rows = await connection.fetch(
        f"""
        SELECT {_COLUMNS} FROM documents
        WHERE ($1::text IS NULL OR id > $1)
          AND (acl_groups IS NULL OR acl_groups && $2::text[])
        ORDER BY id LIMIT $3
        """,  # noqa: S608 - column list is a constant
        after,
        list(groups),
        limit,
    )
    return [DocumentRow(**dict(row)) for row in rows]


async def delete(connection: Connection, document_id: str) -> bool:
    """Delete a document row; False when the tenant has no such document."""
    status: str = await connection.execute("DELETE FROM documents WHERE id = $1", document_id)
    return status != "DELETE 0"


async def count(connection: Connection) -> int:
    """Number of documents the tenant has."""
    value: int = await connection.fetchval("SELECT count(*) FROM documents")
    return value
