"""`bulkhead tenants offboard`: export a tenant's data, then remove every trace of it.

Order: 1) export (documents metadata, conversations in plaintext, audit, usage, manifest) and
stop if that fails; 2) destroy the tenant's data key, committed on its own, so whatever a
later step might miss is unreadable (crypto-shredding); 3) delete its secrets through the
secrets backend (Postgres, Vault or AWS); 4) delete its vectors (Qdrant server mode: revoke its
scoped key, delete its points in the shared collection, drop its dedicated one); 5) delete its
rows from every table of the schema that has a `tenant_id` column, found in the catalog (tables
added later are covered without touching this module), then the tenant itself, announced by
NOTIFY.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from app.chat import repository
from app.chat.conversations import turn_record
from app.chat.crypto import ConversationCipher
from app.config import Settings
from app.db.pool import Connection, connect, tenant_transaction
from app.db.registry import CHANNEL
from app.db.urls import runtime_url
from app.limits.store import RATE_SYNC_LOCK_CLASS
from app.secrets.backend import SecretsBackend
from app.tenancy.scope import TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.setup import purge_server_tenant
from app.vectors.spaces import VectorSpaces

# Exported as NDJSON, one row a line, in a stable order.
_EXPORTED_TABLES = {"documents": "id", "audit_events": "id", "usage": "id"}
_EXPORT_FILES = {"audit_events": "audit", "documents": "documents", "usage": "usage"}


class OffboardError(RuntimeError):
    """Offboarding stopped; the message says which step and what is already gone."""


@dataclass(slots=True)
class OffboardReport:
    """What `offboard` exported and removed."""

    tenant_id: str
    exported: dict[str, int] = field(default_factory=dict)
    data_key_destroyed: bool = False
    secrets_deleted: list[str] = field(default_factory=list)
    vectors: str = ""
    rows_deleted: dict[str, int] = field(default_factory=dict)


def _offboarding(tenant_id: str) -> TenantScope:
    """The scope the offboarding job reads and deletes the tenant's rows under."""
    return TenantScope.system(tenant_id, actor="bulkhead:offboard")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _write_ndjson(path: Path, rows: list[dict[str, Any]]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, default=str, ensure_ascii=False, sort_keys=True) + "\n")
    return len(rows)


def _prepare_directory(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise OffboardError(f"export directory {directory} is not empty")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


async def tenant_tables(connection: Connection) -> list[str]:
    """Every base table of the current schema with a `tenant_id` column, from the catalog."""
    rows = await connection.fetch(
        """
        SELECT c.table_name
        FROM information_schema.columns AS c
        JOIN information_schema.tables AS t
          ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = current_schema() AND c.column_name = 'tenant_id'
          AND t.table_type = 'BASE TABLE'
        ORDER BY c.table_name
        """
    )
    return [row["table_name"] for row in rows]


async def _conversations(
    connection: Connection, *, cipher: ConversationCipher, tenant_id: str
) -> list[dict[str, Any]]:
    """Every conversation of the tenant with its messages, decrypted by the chat repository."""
    sealer = await cipher.sealer(connection, tenant_id=tenant_id)
    turns: dict[Any, list[dict[str, Any]]] = {}
    for turn in await repository.read_turns(connection, sealer=sealer):
        turns.setdefault(turn.conversation_id, []).append(turn_record(turn, with_context=True))
    summaries = await repository.list_conversations(connection, user_id=None)
    return [
        {
            "id": str(summary.id),
            "user_id": summary.user_id,
            "created_at": summary.created_at.isoformat(),
            "updated_at": summary.updated_at.isoformat(),
            "messages": turns.get(summary.id, []),
        }
        for summary in sorted(summaries, key=lambda c: (c.created_at, c.id))
    ]


async def export_tenant(
    connection: Connection, *, cipher: ConversationCipher, tenant_id: str, directory: Path
) -> dict[str, int]:
    """Write the tenant's data as NDJSON files (0600) into a new or empty `directory`.

    Read in one repeatable-read snapshot, so the files agree with each other. `connection`
    must be one Row-Level Security applies to (the runtime role, not a superuser).

    Raises:
        OffboardError: `directory` exists and is not empty.
    """
    _prepare_directory(directory)
    counts: dict[str, int] = {}
    async with tenant_transaction(
        connection, scope=_offboarding(tenant_id), isolation="repeatable_read", readonly=True
    ):
        manifest = await connection.fetchval(
            "SELECT manifest FROM tenants WHERE id = $1", tenant_id
        )
        counts["manifest"] = _write_ndjson(directory / "manifest.ndjson", [manifest])
        for table, order in _EXPORTED_TABLES.items():
            rows = await connection.fetch(
                f"SELECT * FROM {_quote(table)} WHERE tenant_id = $1 ORDER BY {order}",  # noqa: S608 - constant names
                tenant_id,
            )
            name = _EXPORT_FILES[table]
            counts[name] = _write_ndjson(directory / f"{name}.ndjson", [dict(r) for r in rows])
        conversations = await _conversations(connection, cipher=cipher, tenant_id=tenant_id)
        counts["conversations"] = _write_ndjson(directory / "conversations.ndjson", conversations)
    return counts


async def destroy_data_key(connection: Connection, *, tenant_id: str) -> bool:
    """Delete the tenant's wrapped data key, committed at once (crypto-shredding)."""
    async with tenant_transaction(connection, scope=_offboarding(tenant_id)):
        status = await connection.execute("DELETE FROM tenant_keys WHERE tenant_id = $1", tenant_id)
    return status != "DELETE 0"


async def delete_secrets(backend: SecretsBackend, *, tenant_id: str) -> list[str]:
    """Delete every secret ref of the tenant from the secrets backend; returns the refs."""
    scope = TenantScope.operator(tenant_id)
    deleted = []
    for ref, _version in await backend.list(scope=scope):
        await backend.delete(ref, scope=scope)
        deleted.append(str(ref))
    return deleted


async def delete_vectors(
    settings: Settings, *, tenant_id: str, backend: SecretsBackend | None = None
) -> str:
    """Delete the tenant's points from the embedded shard, or leave it to the running service.

    A running service holds the shard; it deletes a tenant's points itself when the registry
    sees the tenant removed (see `app/resources.py`). In Qdrant server mode the server is
    reached with the cluster key (resolved through `backend`), which also drops collections.

    Raises:
        ValueError: Server mode without a secrets backend.
    """
    if settings.vectors.backend == "qdrant":
        if backend is None:
            raise ValueError("server mode reaches Qdrant with the cluster key: pass the backend")
        return await purge_server_tenant(settings, backend, tenant_id)
    try:
        index = EdgeIndex.open(settings.vector_path, search_threads=1)
    except Exception as exc:  # the engine raises a bare Exception for a held WAL lock
        if "WouldBlock" not in str(exc):
            raise
        return "the running service deletes the tenant's vectors when it sees the tenant removed"
    spaces = VectorSpaces(index, settings.dense_vector_root, search_threads=1)
    try:
        deleted = await spaces.delete_tenant(scope=TenantScope.operator(tenant_id))
    finally:
        await spaces.close()
        await index.close()
    return f"deleted {deleted} vectors"


async def delete_rows(connection: Connection, *, tenant_id: str) -> dict[str, int]:
    """Delete the tenant's rows from every tenant table, then the tenant; NOTIFY replicas.

    Tables are emptied child-first: a delete blocked by a foreign key is retried after the
    others, so no table order has to be maintained here.

    Raises:
        OffboardError: Some table cannot be emptied (a reference cycle, or a trigger refusing).
    """
    deleted: dict[str, int] = {}
    async with tenant_transaction(connection, scope=_offboarding(tenant_id)):
        # Until this commits, no rate-limit sync writes counters for the tenant (store.py).
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", RATE_SYNC_LOCK_CLASS, tenant_id
        )
        pending = await tenant_tables(connection)
        while pending:
            blocked = []
            for table in pending:
                try:
                    async with connection.transaction():
                        status = await connection.execute(
                            f"DELETE FROM {_quote(table)} WHERE tenant_id = $1",  # noqa: S608 - catalog name, quoted
                            tenant_id,
                        )
                except asyncpg.ForeignKeyViolationError:
                    blocked.append(table)
                    continue
                deleted[table] = int(status.rsplit(" ", 1)[-1])
            if len(blocked) == len(pending):
                raise OffboardError(f"cannot delete {tenant_id!r} rows from {', '.join(blocked)}")
            pending = blocked
        status = await connection.execute("DELETE FROM tenants WHERE id = $1", tenant_id)
        deleted["tenants"] = int(status.rsplit(" ", 1)[-1])
        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, tenant_id)
    return deleted


async def offboard(
    connection: Connection,
    *,
    tenant_id: str,
    export_dir: Path,
    settings: Settings,
    backend: SecretsBackend,
    cipher: ConversationCipher,
) -> OffboardReport:
    """Export, shred, and delete one tenant (module docstring for the order).

    Raises:
        OffboardError: The tenant does not exist, the export failed (nothing was deleted), or
            a table could not be emptied (the data key is already gone by then).
    """
    exists = await connection.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant_id)
    if not exists:
        raise OffboardError(f"no tenant {tenant_id!r}")
    report = OffboardReport(tenant_id=tenant_id)
    # Read as the runtime role, which Row-Level Security binds: the chat repository's reads
    # rely on it, and an owner that is a superuser (as in many installs) bypasses RLS.
    reader = await connect(runtime_url(settings.db))
    try:
        report.exported = await export_tenant(
            reader, cipher=cipher, tenant_id=tenant_id, directory=export_dir
        )
    finally:
        await reader.close()
    report.data_key_destroyed = await destroy_data_key(connection, tenant_id=tenant_id)
    report.secrets_deleted = await delete_secrets(backend, tenant_id=tenant_id)
    report.vectors = await delete_vectors(settings, tenant_id=tenant_id, backend=backend)
    report.rows_deleted = await delete_rows(connection, tenant_id=tenant_id)
    return report
