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


async def lock_versions(connection: Connection, document_ids: list[str]) -> dict[str, int]:
    """Lock the documents (existing or not) until the transaction ends; their stored versions.

    Advisory locks keyed on (tenant, id), taken in id order: they also cover ids with no row yet
    (two first ingests of one id queue instead of racing), and a fixed order means two batches
    that share documents cannot deadlock.
    """
    committed = await lock_committed(connection, document_ids)
    return {document_id: version for document_id, (version, _) in committed.items()}


async def lock_committed(
    connection: Connection, document_ids: list[str]
) -> dict[str, tuple[int, list[str] | None]]:
    """`lock_versions`, with each stored document's ACL groups beside its version."""
    await connection.execute(
        """
        SELECT pg_advisory_xact_lock(
            hashtextextended(current_setting('bulkhead.tenant_id') || '/' || id, 0))
        FROM (SELECT DISTINCT unnest($1::text[]) AS id ORDER BY 1) AS ids
        """,
        document_ids,
    )
    rows = await connection.fetch(
        "SELECT id, version, acl_groups FROM documents WHERE id = ANY($1::text[])", document_ids
    )
    return {row["id"]: (row["version"], row["acl_groups"]) for row in rows}


@dataclass(frozen=True, slots=True)
class DocumentVersionRow:
    """The row of one new document version."""

    document_id: str
    title: str
    metadata: dict[str, Any]
    acl_groups: list[str] | None
    chunk_count: int
    content_sha256: str
    version: int


async def save_all(
    connection: Connection, *, tenant_id: str, created_by: str, rows: list[DocumentVersionRow]
) -> None:
    """Insert documents or replace them with new versions (one pipelined statement)."""
    await connection.executemany(
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
        [
            (
                tenant_id,
                row.document_id,
                row.title,
                row.metadata,
                row.acl_groups,
                row.chunk_count,
                row.content_sha256,
                row.version,
                created_by,
            )
            for row in rows
        ],
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
