"""SQL for the `documents` table. Every function runs inside a tenant transaction (RLS).

A row's `id` is the document's *key*: the id callers use (its name) and, for documents written
since keys were introduced, `~` and a random suffix (see `app/retrieval/acl.py`). The vectors
carry the same key. `_NAME` recovers the name; `documents_name_idx` indexes exactly it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.db.pool import Connection


@dataclass(frozen=True, slots=True)
class DocumentRow:
    """A stored document (its text lives only in the vector store, chunked)."""

    id: str
    """The document's id, as callers name it."""
    key: str
    """The row's key (its id and, since keys were introduced, a random suffix)."""
    title: str
    metadata: dict[str, Any]
    acl_groups: list[str] | None
    chunk_count: int
    version: int
    created_at: datetime
    updated_at: datetime


_NAME = "split_part(id, '~', 1)"
"""A row's document id (name) from its key: the expression `documents_name_idx` indexes."""
_VISIBLE = "(acl_groups IS NULL OR acl_groups && $2::text[])"
"""Rows the groups in `$2` may see (`app.retrieval.acl.can_see`, in SQL)."""
_COLUMNS = (
    f"{_NAME} AS id, id AS key, title, metadata, acl_groups, chunk_count, version,"
    " created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """One stored document under a name: its key, version and ACL groups."""

    key: str
    version: int
    acl_groups: list[str] | None


async def _lock_names(connection: Connection, ids: list[str]) -> None:
    """Lock the names of `ids` (document ids or keys) until the transaction ends.

    Advisory locks keyed on (tenant, name), taken in name order: they also cover names with no
    row yet (two first ingests of one id queue instead of racing), every document sharing a name
    is written under one lock, and a fixed order means two batches cannot deadlock.
    """
    await connection.execute(
        f"""
        SELECT pg_advisory_xact_lock(
            hashtextextended(current_setting('bulkhead.tenant_id') || '/' || name, 0))
        FROM (SELECT DISTINCT {_NAME} AS name FROM unnest($1::text[]) AS id ORDER BY 1) AS names
        """,  # noqa: S608 - the expression is a constant
        ids,
    )


async def lock_named(connection: Connection, names: list[str]) -> dict[str, list[StoredDocument]]:
    """Lock `names` (see `_lock_names`); every stored document under each, visible or not."""
    await _lock_names(connection, names)
    rows = await connection.fetch(
        f"""
        SELECT {_NAME} AS name, id, version, acl_groups FROM documents
        WHERE {_NAME} = ANY($1::text[]) ORDER BY id
        """,  # noqa: S608 - the expression is a constant
        names,
    )
    stored: dict[str, list[StoredDocument]] = {}
    for row in rows:
        stored.setdefault(row["name"], []).append(
            StoredDocument(row["id"], row["version"], row["acl_groups"])
        )
    return stored


async def lock_versions(connection: Connection, keys: list[str]) -> dict[str, int]:
    """Lock the documents' names (existing or not) until the transaction ends; their versions."""
    committed = await lock_committed(connection, keys)
    return {key: version for key, (version, _) in committed.items()}


async def lock_committed(
    connection: Connection, keys: list[str]
) -> dict[str, tuple[int, list[str] | None]]:
    """`lock_versions`, with each stored document's ACL groups beside its version.

    The lock is the one ingestion takes (on the name), so a reconcile pass deciding about a
    pending version waits for the ingest that wrote it.
    """
    await _lock_names(connection, keys)
    rows = await connection.fetch(
        "SELECT id, version, acl_groups FROM documents WHERE id = ANY($1::text[])", keys
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
    """Documents the caller's groups may see, ordered by id then key, after the cursor's key."""
    rows = await connection.fetch(
        f"""
        SELECT {_COLUMNS} FROM documents
        WHERE ($1::text IS NULL OR ({_NAME}, id) > (split_part($1, '~', 1), $1))
          AND {_VISIBLE}
        ORDER BY {_NAME}, id LIMIT $3
        """,  # noqa: S608 - column list and expressions are constants
        after,
        list(groups),
        limit,
    )
    return [DocumentRow(**dict(row)) for row in rows]


async def delete_visible(
    connection: Connection, *, name: str, groups: tuple[str, ...]
) -> list[str]:
    """Delete every document named `name` the groups may see, under its lock; their keys.

    Documents under that name the groups may not see are neither deleted nor reported.
    """
    await _lock_names(connection, [name])
    rows = await connection.fetch(
        f"DELETE FROM documents WHERE {_NAME} = $1 AND {_VISIBLE} RETURNING id",  # noqa: S608
        name,
        list(groups),
    )
    return sorted(row["id"] for row in rows)


async def delete_keys(connection: Connection, keys: list[str]) -> None:
    """Delete the rows of these keys (their names locked by the caller)."""
    await connection.execute("DELETE FROM documents WHERE id = ANY($1::text[])", keys)


async def count(connection: Connection) -> int:
    """Number of documents the tenant has."""
    value: int = await connection.fetchval("SELECT count(*) FROM documents")
    return value
