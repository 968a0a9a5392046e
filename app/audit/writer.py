"""The audit trail: one row per authenticated request, written off the hot path.

Rows go into a bounded in-memory queue that a background task drains in batches (one
transaction per tenant, so RLS checks every row), each row hash-chained to the tenant's
previous one under a per-tenant advisory lock (`app/audit/chain.py`). When the queue is
full, `record` waits: requests slow down rather than lose audit rows. That is a deliberate
choice: an audit trail with silent gaps is worse than back-pressure, and a full queue means
Postgres is already the bottleneck. `close()` drains everything before the service exits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, astuple, dataclass
from datetime import datetime
from itertools import groupby

import asyncpg

from app.audit.batching import BatchWriter
from app.audit.chain import append_lock, link
from app.db.pool import set_tenant

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """What happened on one authenticated request. Never carries a token or secret."""

    tenant_id: str
    occurred_at: datetime
    principal: str
    credential_id: str
    method: str
    route: str
    status: int
    latency_ms: float
    source_ip: str | None
    trace_id: str


class AuditWriter(BatchWriter[AuditRow]):
    """Buffers audit rows and writes them in batches."""

    def __init__(
        self, pool: asyncpg.Pool, *, buffer_size: int, batch_size: int, flush_interval: float
    ) -> None:
        super().__init__(
            name="audit-writer",
            buffer_size=buffer_size,
            batch_size=batch_size,
            flush_interval=flush_interval,
        )
        self._pool = pool

    async def record(self, row: AuditRow) -> None:
        """Queue a row, waiting for room when the buffer is full (back-pressure)."""
        await self._queue.put(row)

    async def _handle(self, batch: list[AuditRow]) -> None:
        delay = 0.1
        while True:
            try:
                await self._write(batch)
                return
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
                # A row Postgres will never accept (its tenant was offboarded meanwhile):
                # retrying would stall the trail for everyone, so log it and move on.
                _log.exception("audit batch rejected by the database: %s", _summary(batch))
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                # Keep the rows and retry: the bounded queue pushes back on requests meanwhile.
                _log.exception("audit write failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, batch: list[AuditRow]) -> None:
        ordered = sorted(batch, key=lambda r: r.tenant_id)
        async with self._pool.acquire() as connection:
            for tenant_id, rows in groupby(ordered, key=lambda r: r.tenant_id):
                async with connection.transaction():
                    await set_tenant(connection, tenant_id)
                    seq, prev = await append_lock(connection, tenant_id)
                    records = []
                    for row in rows:
                        seq += 1
                        values = asdict(row) | {"seq": seq}
                        row_hash = link(prev, values)
                        records.append((*astuple(row), seq, prev, row_hash))
                        prev = row_hash
                    await connection.executemany(
                        """
                        INSERT INTO audit_events (tenant_id, occurred_at, principal,
                            credential_id, method, route, status, latency_ms, source_ip, trace_id,
                            seq, prev_hash, row_hash)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                        """,
                        records,
                    )


def _summary(batch: list[AuditRow]) -> str:
    return ", ".join(
        f"{r.tenant_id} {r.method} {r.route} {r.status} trace={r.trace_id}" for r in batch
    )
