"""The audit trail: one row per authenticated request, written off the hot path.

Rows go into a bounded in-memory queue that a background task drains in batches. Each
tenant's rows in a batch are written in their own transaction (so RLS checks every row),
hash-chained to the tenant's previous row under a per-tenant advisory lock
(`app/audit/chain.py`). When the queue is full, `record` waits: requests slow down rather
than lose audit rows. That is a deliberate choice: an audit trail with silent gaps is worse
than back-pressure, and a full queue means Postgres is already the bottleneck.

What happens to a row that cannot be written:

- Postgres unavailable (stopped, restarting, connection lost): the rows are kept and retried
  with backoff until it is back; the bounded queue pushes back on requests meanwhile. A retry
  after a connection lost during a commit first looks for the rows already written, so an
  uncertain commit is not written twice.
- Postgres rejects a tenant's rows (a constraint or data error, e.g. the tenant was
  offboarded between the request and the write: `audit_events_tenant_id_fkey`): that
  tenant's rows are retried one by one in their own transactions, and a row still refused
  is parked: logged at ERROR (tenant, time, route, status, trace id) and counted in
  `bulkhead.audit.rejected` (attribute `reason`: `tenant_gone`, `rejected` or `error`).
  Other tenants' rows in the same batch are written regardless. A gone tenant's rows are not
  kept anywhere else: offboarding deleted that tenant's trail, and keeping rows of a tenant
  that no longer exists would undo it.
- Shutdown: `close(grace_seconds=...)` drains the queue for at most the grace period; rows
  still unwritten after it are logged one by one at ERROR and counted in
  `bulkhead.audit.unwritten`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg
from opentelemetry import metrics

from app.audit.batching import BatchWriter
from app.audit.chain import append_lock, link
from app.db.errors import database_unavailable
from app.db.pool import Connection, tenant_transaction
from app.tenancy.scope import TenantScope

_log = logging.getLogger(__name__)

WRITER_ACTOR = "bulkhead:audit-writer"
"""The system actor appending each tenant's rows (they name the request's caller, not it)."""

_meter = metrics.get_meter("bulkhead.audit")
REJECTED = _meter.create_counter(
    "bulkhead.audit.rejected",
    unit="{row}",
    description="Audit rows Postgres refused (parked: logged, not written), by reason",
)
UNWRITTEN = _meter.create_counter(
    "bulkhead.audit.unwritten",
    unit="{row}",
    description="Audit rows still unwritten when the service stopped (after the grace period)",
)
RETRIES = _meter.create_counter(
    "bulkhead.audit.retries",
    unit="{attempt}",
    description="Audit writes retried (Postgres unavailable or a transient error)",
)

# Errors on other than connection failures are retried this often before the rows are
# isolated and parked: a permanent error must not stall every tenant's trail.
_TRANSIENT_ATTEMPTS = 5
_MAX_BACKOFF_SECONDS = 2.0

_INSERT = """
    INSERT INTO audit_events (tenant_id, occurred_at, principal, credential_id, method, route,
        status, latency_ms, source_ip, trace_id, seq, prev_hash, row_hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
"""


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


_ROW_FIELDS = tuple(field.name for field in fields(AuditRow))


def _values(row: AuditRow) -> dict[str, Any]:
    """The row's fields by name, in declaration order (`asdict` without its deep copy)."""
    return {name: getattr(row, name) for name in _ROW_FIELDS}


class AuditWriter(BatchWriter[AuditRow]):
    """Buffers audit rows and writes them in batches (module docstring: failure handling)."""

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
        by_tenant: dict[str, list[AuditRow]] = {}
        for row in batch:
            by_tenant.setdefault(row.tenant_id, []).append(row)
        for rows in by_tenant.values():
            await self._deliver(rows)
            done = {id(row) for row in rows}
            batch[:] = [row for row in batch if id(row) not in done]

    async def _deliver(self, rows: list[AuditRow]) -> None:
        """Write one tenant's rows: retry while Postgres is away, isolate what it refuses."""
        failures, delay = 0, 0.1
        while True:
            try:
                await self._insert(rows, after_failure=failures > 0)
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                await self._isolate(rows, exc)
                return
            except Exception as exc:
                failures += 1
                outage = database_unavailable(exc)
                if not outage and (
                    failures >= _TRANSIENT_ATTEMPTS
                    or not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError)
                ):
                    await self._isolate(rows, exc)
                    return
                RETRIES.add(1)
                if outage:
                    _log.warning(
                        "audit write: database unavailable (%s); %d rows kept, retry %d in %.1fs",
                        type(exc).__name__,
                        len(rows),
                        failures,
                        delay,
                    )
                else:
                    _log.exception("audit write failed; retry %d in %.1fs", failures, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
                continue
            if failures:
                _log.info("audit write: %d rows written after %d retries", len(rows), failures)
            return

    async def _isolate(self, rows: list[AuditRow], exc: Exception) -> None:
        if len(rows) > 1:
            # One bad row must not take its neighbours: each gets its own transaction.
            for row in rows:
                await self._deliver([row])
            return
        _park(rows[0], exc)

    async def _insert(self, rows: list[AuditRow], *, after_failure: bool) -> None:
        tenant_id = rows[0].tenant_id
        scope = TenantScope.system(tenant_id, actor=WRITER_ACTOR)
        async with tenant_transaction(self._pool, scope=scope) as connection:
            seq, prev = await append_lock(connection, tenant_id)
            if after_failure:
                # The last attempt may have committed before its connection broke.
                rows = await _not_yet_written(connection, rows)
            records = []
            for row in rows:
                seq += 1
                values = _values(row)
                row_hash = link(prev, values | {"seq": seq})
                records.append((*values.values(), seq, prev, row_hash))
                prev = row_hash
            if records:
                await connection.executemany(_INSERT, records)

    def _abandon(self, rows: list[AuditRow]) -> None:
        for row in rows:
            _log.error("audit row not written before shutdown: %s", _describe(row))
        _log.error(
            "service stopping: %d audit rows could not be written within the grace period"
            " (database unavailable?); they are listed above",
            len(rows),
        )
        UNWRITTEN.add(len(rows))


async def _not_yet_written(connection: Connection, rows: list[AuditRow]) -> list[AuditRow]:
    """`rows` minus those already in the table (same tenant, time and trace id)."""
    written = await connection.fetch(
        "SELECT occurred_at, trace_id FROM audit_events"
        " WHERE tenant_id = $1 AND occurred_at = ANY($2::timestamptz[])",
        rows[0].tenant_id,
        [row.occurred_at for row in rows],
    )
    present = {(r["occurred_at"], r["trace_id"]) for r in written}
    return [row for row in rows if (row.occurred_at, row.trace_id) not in present]


def _park(row: AuditRow, exc: Exception) -> None:
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        reason = "tenant_gone"
    elif isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        reason = "rejected"
    else:
        reason = "error"
    REJECTED.add(1, {"reason": reason})
    _log.error(
        "audit row rejected (%s), not written: %s: %s",
        reason,
        _describe(row),
        f"{type(exc).__name__}: {exc}"[:300],
    )


def _describe(row: AuditRow) -> str:
    # Enough to find the request again (its trace); no principal or address in the log.
    return (
        f"tenant={row.tenant_id} at={row.occurred_at.isoformat()} {row.method} {row.route}"
        f" status={row.status} trace={row.trace_id}"
    )
