"""The audit trail's hash chain: one chain per tenant, verifiable offline.

Each row stores `seq` (1, 2, ... per tenant), `prev_hash` (the previous row's `row_hash`, 32
zero bytes for the first) and `row_hash = SHA-256(prev_hash || canonical(row))`, where the
canonical form is the compact JSON array of the row's fields in a fixed order (`canonical`).
Changing, deleting or reordering a row breaks the chain at that row; the runtime role cannot
UPDATE or DELETE rows at all (migration 0005), so only the table owner can, and `bulkhead
audit verify` finds it. Removing the newest rows is not detectable from the table alone:
anchor the head hash elsewhere (e.g. export it daily) to cover that.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from app.db.pool import Connection

GENESIS: Final = bytes(32)
# Chained rows by position, then unchained ones by id (legacy rows come first in id).
_VERIFY_QUERY: Final = (
    "SELECT id, seq, prev_hash, row_hash, tenant_id, occurred_at, principal, credential_id,"
    " method, route, status, latency_ms, source_ip, trace_id"
    " FROM audit_events WHERE tenant_id = $1 ORDER BY seq NULLS LAST, id"
)
# Namespace of the per-tenant advisory lock that serialises appends (pg_advisory_xact_lock's
# first key); the second key is hashtext(tenant_id).
LOCK_CLASS: Final = 0x41554454


def canonical(values: dict[str, Any]) -> bytes:
    """The row's bytes as hashed: its fields in a fixed order, as compact JSON.

    Order: tenant, seq, time (UTC, microseconds), principal, credential, method, route,
    status, latency, source address, trace id.
    """
    occurred: datetime = values["occurred_at"]
    source_ip = values["source_ip"]
    return json.dumps(
        [
            values["tenant_id"],
            values["seq"],
            occurred.astimezone(UTC).isoformat(timespec="microseconds"),
            values["principal"],
            values["credential_id"],
            values["method"],
            values["route"],
            values["status"],
            # The column is `real`: hash the value as stored and read back, not as measured.
            repr(struct.unpack("f", struct.pack("f", values["latency_ms"]))[0]),
            None if source_ip is None else str(source_ip),
            values["trace_id"],
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def link(prev_hash: bytes, values: dict[str, Any]) -> bytes:
    """`row_hash` of a row whose predecessor's hash is `prev_hash`."""
    return hashlib.sha256(prev_hash + canonical(values)).digest()


async def append_lock(connection: Connection, tenant_id: str) -> tuple[int, bytes]:
    """Take the tenant's append lock (until the transaction ends) and read the chain head.

    Replicas append to one tenant's chain one transaction at a time, so the chain never forks.

    Returns:
        (last seq, its row_hash), or (0, GENESIS) for an empty chain.
    """
    await connection.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, tenant_id
    )
    # A separate statement: under READ COMMITTED it sees what the previous holder committed.
    head = await connection.fetchrow(
        "SELECT seq, row_hash FROM audit_events WHERE tenant_id = $1 AND seq IS NOT NULL"
        " ORDER BY seq DESC LIMIT 1",
        tenant_id,
    )
    return (head["seq"], head["row_hash"]) if head else (0, GENESIS)


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where verification failed: the chain position, the row id and what was wrong."""

    position: int
    row_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of verifying a tenant's chain."""

    rows: int
    legacy_rows: int
    head: bytes
    broken: ChainBreak | None


async def verify(connection: Connection, tenant_id: str) -> Verification:
    """Walk the tenant's chain in `seq` order and report the first break.

    Rows written before the chain existed (no `seq`, older than the first chained row) are
    counted as legacy; an unchained row after the chain began is a break.
    """
    expected_seq, prev, legacy, first_id = 1, GENESIS, 0, None
    async for row in _rows(connection, tenant_id):
        if row["seq"] is None:
            if first_id is None or row["id"] < first_id:
                legacy += 1
                continue
            return _broken(expected_seq, prev, legacy, row["id"], "row without a chain position")
        if first_id is None:
            first_id = row["id"]
        if row["seq"] != expected_seq:
            reason = f"expected position {expected_seq}, found {row['seq']} (row missing)"
            return _broken(expected_seq, prev, legacy, row["id"], reason)
        if row["prev_hash"] != prev:
            return _broken(expected_seq, prev, legacy, row["id"], "prev_hash does not link")
        if link(prev, dict(row)) != row["row_hash"]:
            return _broken(expected_seq, prev, legacy, row["id"], "row content changed")
        prev = row["row_hash"]
        expected_seq += 1
    return Verification(rows=expected_seq - 1, legacy_rows=legacy, head=prev, broken=None)


def _broken(position: int, head: bytes, legacy: int, row_id: int, reason: str) -> Verification:
    return Verification(
        rows=position - 1,
        legacy_rows=legacy,
        head=head,
        broken=ChainBreak(position=position, row_id=row_id, reason=reason),
    )


async def _rows(connection: Connection, tenant_id: str) -> AsyncIterator[Any]:
    async for row in connection.cursor(_VERIFY_QUERY, tenant_id, prefetch=1000):
        yield row
