"""Can the service get a new Postgres connection right now? Asked by `/readyz`.

A pooled connection says little: in a smart shutdown, or once `max_connections` is reached,
the connections already open keep working while every new one is refused. So readiness opens
a fresh connection with a short timeout. The answer is shared for `cache_seconds` (and
concurrent probes wait for the one in flight), so a probe storm costs one connect a second.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

_log = logging.getLogger(__name__)


class ConnectProbe:
    """Opens, pings and closes one connection; remembers the verdict briefly."""

    def __init__(self, dsn: str, *, timeout_seconds: float, cache_seconds: float) -> None:
        self._dsn = dsn
        self._timeout = timeout_seconds
        self._cache_seconds = cache_seconds
        self._verdict = False
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def ok(self) -> bool:
        """True when a new connection opened and answered `SELECT 1` in time."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._cache_seconds:
                self._verdict = await self._check()
                self._checked_at = time.monotonic()
            return self._verdict

    async def _check(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                connection = await asyncpg.connect(self._dsn, timeout=self._timeout)
                try:
                    answered = await connection.fetchval("SELECT 1")
                except BaseException:
                    connection.terminate()
                    raise
                await connection.close()
                return bool(answered)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self._verdict or self._checked_at == float("-inf"):
                _log.warning("readiness: cannot open a database connection: %s", exc)
            return False
