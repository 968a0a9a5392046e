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


class AuthFailureLog:
    """Counts every failure at once; writes the rows in batches off the hot path."""

    def __init__(self, pool: asyncpg.Pool, *, buffer_size: int = 10_000) -> None:
        self._pool = pool
        self._queue: asyncio.Queue[AuthFailure] = asyncio.Queue(maxsize=buffer_size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="auth-failures")

    def record(self, failure: AuthFailure) -> None:
        """Count the failure and queue its row (dropped, and counted, if the buffer is full)."""
        AUTH_FAILURES.add(1, {"tenant": failure.tenant_id or "unknown", "reason": failure.reason})
        try:
            self._queue.put_nowait(failure)
        except asyncio.QueueFull:
            _DROPPED.add(1)

    async def flush(self) -> None:
        """Wait until every queued row has been written."""
        if self._task is None or self._task.done():
            return
        joined = asyncio.ensure_future(self._queue.join())
        await asyncio.wait({joined, self._task}, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()

    async def close(self) -> None:
        """Write what is queued, then stop."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < 500 and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                _log.exception("writing %d auth-failure rows failed; dropped", len(batch))
                _DROPPED.add(len(batch))
            for _ in batch:
                self._queue.task_done()

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
