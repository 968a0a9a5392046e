"""Audit export: a tenant's audit rows as NDJSON, streamed from a server-side cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from app.db.pool import tenant_transaction
from app.tenancy.scope import TenantScope

_EXPORT_QUERY = """
    SELECT id, seq, occurred_at, principal, credential_id, method, route, status, latency_ms,
           source_ip, trace_id, prev_hash, row_hash
    FROM audit_events
    WHERE ($1::timestamptz IS NULL OR occurred_at >= $1)
      AND ($2::timestamptz IS NULL OR occurred_at < $2)
    ORDER BY seq NULLS FIRST, id
    LIMIT $3
"""


async def export_ndjson(
    pool: asyncpg.Pool,
    *,
    scope: TenantScope,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> AsyncIterator[bytes]:
    """Yield the tenant's audit rows in chain order, one JSON object per line.

    Hashes are hex, so a consumer can re-verify the chain offline (`app/audit/chain.py`);
    RLS limits the rows to the caller's tenant. `since` is inclusive, `until` exclusive.
    """
    async with tenant_transaction(pool, scope=scope) as connection:
        async for row in connection.cursor(_EXPORT_QUERY, since, until, limit, prefetch=500):
            yield msgspec.json.encode(_line(row)) + b"\n"


async def started(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`lines` with its first item already fetched.

    A failure to reach the database is raised now, as an error response, rather than after a
    200 has started streaming.

    Raises:
        Exception: Whatever fetching the first item raised.
    """
    first = await anext(aiter(lines), None)

    async def rest() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield first
        async for line in lines:
            yield line

    return rest()


def _line(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "seq": row["seq"],
        "occurred_at": row["occurred_at"].isoformat(),
        "principal": row["principal"],
        "credential_id": row["credential_id"],
        "method": row["method"],
        "route": row["route"],
        "status": row["status"],
        "latency_ms": row["latency_ms"],
        "source_ip": None if row["source_ip"] is None else str(row["source_ip"]),
        "trace_id": row["trace_id"],
        "prev_hash": row["prev_hash"].hex() if row["prev_hash"] else None,
        "row_hash": row["row_hash"].hex() if row["row_hash"] else None,
    }
