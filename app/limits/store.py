"""Where request counters live: Postgres (default) or Redis (`BULKHEAD_REDIS_URL`).

Both answer one request in one round trip. Postgres runs `bulkhead_rate_hit` (migration
0005): one upsert over the request's buckets in an UNLOGGED table plus the day's token
total. Redis runs one Lua script (INCR + EXPIRE per bucket, window from the server's
clock). The token budget always lives in Postgres, charged by a trigger in the same
transaction as the usage ledger row; with Redis it is read alongside the script, at most
once a second per tenant and replica (`TOKENS_TTL_SECONDS`).

Why not the `limits` library: it charges one limit per call and reads window stats with
another, so three buckets plus headers cost six round trips, and its windows start at the
first hit, which makes `t=` in the RateLimit header another read.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import asyncpg
from redis.asyncio import Redis

from app.limits.policy import WINDOW_SECONDS, Counts
from app.tenancy.scope import TenantScope

TOKENS_TTL_SECONDS = 1.0
"""With Redis, how long a replica reuses a tenant's token total (a daily budget may overrun
by about one second of traffic; it saves a Postgres round trip on most chat requests)."""
_MAX_CACHED_TENANTS = 10_000

_HIT_SCRIPT = """
local now = redis.call('TIME')
local seconds = tonumber(now[1])
local window = math.floor(seconds / tonumber(ARGV[1]))
local reset = tonumber(ARGV[1]) - (seconds % tonumber(ARGV[1])) - tonumber(now[2]) / 1000000
local hits = {}
for i, prefix in ipairs(KEYS) do
    local key = prefix .. ':' .. window
    local n = redis.call('INCR', key)
    if n == 1 then redis.call('EXPIRE', key, 2 * tonumber(ARGV[1])) end
    hits[i] = n
end
return {hits, tostring(reset)}
"""


class CounterStore(Protocol):
    """Counts requests per bucket in shared fixed windows."""

    async def hit(self, scope: TenantScope, keys: list[str], *, with_tokens: bool) -> Counts:
        """Count one request of `scope`'s tenant against each of `keys`; read today's tokens too.

        The tenant comes from the scope only: in Postgres the counting functions arm RLS for
        the tenant they are given, so a bare id string must not reach them.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class PostgresCounters:
    """Counters in the `rate_counters` table, shared by every replica on the database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def hit(self, scope: TenantScope, keys: list[str], *, with_tokens: bool) -> Counts:
        """One statement: bump every bucket, read the window's reset and today's tokens."""
        rows = await self._pool.fetch(
            "SELECT * FROM bulkhead_rate_hit($1, $2)", scope.tenant_id, keys
        )
        return Counts(
            hits={row["o_bucket"]: row["o_hits"] for row in rows},
            reset_seconds=rows[0]["o_reset"] if rows else float(WINDOW_SECONDS),
            tokens_today=rows[0]["o_tokens"] if rows and with_tokens else None,
        )

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to the service."""


class RedisCounters:
    """Counters in Redis (standalone or one shard: a tenant's keys share a hash tag)."""

    def __init__(
        self, client: Redis, pool: asyncpg.Pool, *, tokens_ttl: float = TOKENS_TTL_SECONDS
    ) -> None:
        self._client = client
        self._script = client.register_script(_HIT_SCRIPT)
        self._pool = pool
        self._tokens_ttl = tokens_ttl
        self._tokens: dict[str, tuple[float, int]] = {}

    @classmethod
    def from_url(
        cls, url: str, pool: asyncpg.Pool, *, tokens_ttl: float = TOKENS_TTL_SECONDS
    ) -> RedisCounters:
        """A client for `url` (`redis://`, `rediss://`, `unix://`)."""
        client = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return cls(client, pool, tokens_ttl=tokens_ttl)

    async def hit(self, scope: TenantScope, keys: list[str], *, with_tokens: bool) -> Counts:
        """One script call for the buckets, and the token read alongside it when asked."""
        tenant_id = scope.tenant_id
        prefixes = [f"bulkhead:rl:{{{tenant_id}}}:{key}" for key in keys]
        script = self._script(keys=prefixes, args=[WINDOW_SECONDS])
        if not with_tokens:
            hits, reset = await script
            return _counts(keys, hits, reset, None)
        now = time.monotonic()
        cached = self._tokens.get(tenant_id)
        if cached is not None and cached[0] > now:
            hits, reset = await script
            return _counts(keys, hits, reset, cached[1])
        answered: tuple[Any, Any] = await asyncio.gather(
            script, self._pool.fetchval("SELECT bulkhead_tokens_today($1)", tenant_id)
        )
        (hits, reset), used = answered[0], int(answered[1] or 0)
        self._remember(tenant_id, now, used)
        return _counts(keys, hits, reset, used)

    def _remember(self, tenant_id: str, now: float, tokens: int) -> None:
        if len(self._tokens) >= _MAX_CACHED_TENANTS:
            self._tokens = {t: v for t, v in self._tokens.items() if v[0] > now}
        self._tokens[tenant_id] = (now + self._tokens_ttl, tokens)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()


def _counts(keys: list[str], hits: list[Any], reset: Any, tokens: int | None) -> Counts:
    return Counts(
        hits={key: int(n) for key, n in zip(keys, hits, strict=True)},
        reset_seconds=float(reset),
        tokens_today=tokens,
    )
