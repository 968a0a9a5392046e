"""Refused authentications: an OTel counter SREs alert on, and rows in `auth_failures`.

The counter `bulkhead.auth.failures` carries `tenant` (the tenant the credential claimed or
belongs to, `unknown` when none could be told) and `reason` (a stable code such as `expired`,
`unknown_kid`, `revoked`). Rows never hold a token: only the reason, a key id or kid, route,
source address and trace id.

Unlike the audit trail, this log drops rows when its buffer is full (and counts the drops):
the traffic here is unauthenticated, and back-pressure would let anyone stall the service by
sending garbage tokens faster than Postgres can record them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from opentelemetry import metrics

from app.audit.batching import BatchWriter

_log = logging.getLogger(__name__)

_meter = metrics.get_meter("bulkhead.identity")
AUTH_FAILURES = _meter.create_counter(
    "bulkhead.auth.failures",
    unit="{failure}",
    description="Refused authentications by tenant (or 'unknown') and reason code",
)
_DROPPED = _meter.create_counter(
    "bulkhead.auth.failures.dropped",
    unit="{row}",
    description="Auth-failure log rows dropped because the buffer was full",
)


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """One refused authentication. Never carries a token."""

    occurred_at: datetime
    tenant_id: str | None
    reason: str
    credential_id: str | None
    method: str
    route: str
    source_ip: str | None
    trace_id: str


class AuthFailureLog(BatchWriter[AuthFailure]):
    """Counts every failure at once; writes the rows in batches off the hot path."""

    def __init__(self, pool: asyncpg.Pool, *, buffer_size: int = 10_000) -> None:
        # Batches only what is already queued (no wait): rows here carry no back-pressure.
        super().__init__(
            name="auth-failures", buffer_size=buffer_size, batch_size=500, flush_interval=0
        )
        self._pool = pool

    def record(self, failure: AuthFailure) -> None:
        """Count the failure and queue its row (dropped, and counted, if the buffer is full)."""
        AUTH_FAILURES.add(1, {"tenant": failure.tenant_id or "unknown", "reason": failure.reason})
        try:
            self._queue.put_nowait(failure)
        except asyncio.QueueFull:
            _DROPPED.add(1)

    async def _handle(self, batch: list[AuthFailure]) -> None:
        try:
            await self._write(batch)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            _log.exception("writing %d auth-failure rows failed; dropped", len(batch))
            _DROPPED.add(len(batch))

    def _abandon(self, rows: list[AuthFailure]) -> None:
        _log.error("service stopping: %d auth-failure rows not written; dropped", len(rows))
        _DROPPED.add(len(rows))

    async def _write(self, batch: list[AuthFailure]) -> None:
        async with self._pool.acquire() as connection:
            await connection.executemany(
                """
                INSERT INTO auth_failures (occurred_at, tenant_id, reason, credential_id,
                                           method, route, source_ip, trace_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                """,
                [
                    (
                        f.occurred_at,
                        f.tenant_id,
                        f.reason,
                        f.credential_id,
                        f.method,
                        f.route,
                        f.source_ip,
                        f.trace_id,
                    )
                    for f in batch
                ],
            )
