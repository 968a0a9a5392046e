"""Where request counters live: Postgres (default) or Redis (`BULKHEAD_REDIS_URL`).

Two ways in, each one round trip per store:

- `hit` counts one request (exact admission, manifest `limits.admission: exact`). Postgres
  runs `bulkhead_rate_hit` (migration 0005): one upsert over the request's buckets in an
  UNLOGGED table plus the day's token total. Redis runs one Lua script (INCR + EXPIRE per
  bucket, window from the server's clock).
- `sync` carries a replica's batch (local admission, `app/limits/local.py`): every count taken
  since its last sync, each tagged with its window, added in one call that returns the new
  totals, the store's clock, and the token totals asked for. Postgres runs
  `bulkhead_rate_sync` (migration 0011); Redis one Lua script (INCRBY + EXPIRE per key).

The token budget always lives in Postgres, charged by a trigger in the same transaction as
the usage ledger row. With Redis, `hit` reads it alongside the script, at most once a second
per tenant and replica (`TOKENS_TTL_SECONDS`); `sync` reads it for the whole batch in one
Postgres statement sent alongside the script.

Why not the `limits` library: it charges one limit per call and reads window stats with
another, so three buckets plus headers cost six round trips, and its windows start at the
first hit, which makes `t=` in the RateLimit header another read. It has no batched or
locally admitted mode either (nor has `pyrate-limiter` or `throttled-py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.limits.policy import WINDOW_SECONDS, Counts
from app.tenancy.scope import TenantScope

RATE_SYNC_LOCK_CLASS: Final = 0x524C494D
"""Advisory-lock class of a tenant's rate counters: `bulkhead_rate_sync` (migration 0011) holds
it shared per tenant, offboarding exclusively, so no sync writes counters for a tenant whose
rows offboarding has deleted."""

_log = logging.getLogger(__name__)

TOKENS_TTL_SECONDS = 1.0
"""With Redis, how long a replica reuses a tenant's token total (a daily budget may overrun
by about one second of traffic; it saves a Postgres round trip on most chat requests)."""
_MAX_CACHED_TENANTS = 10_000

STORE_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    RedisConnectionError,
    RedisTimeoutError,
)
"""Unreachable, not broken: a SQL or script error is a bug and must surface."""

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

# KEYS: `<prefix>:<window>`; ARGV: the keys' TTL, then one delta per key.
_SYNC_SCRIPT = """
local ttl = tonumber(ARGV[1])
local totals = {}
for i, key in ipairs(KEYS) do
    local delta = tonumber(ARGV[i + 1])
    local n = redis.call('INCRBY', key, delta)
    if n == delta then redis.call('EXPIRE', key, ttl) end
    totals[i] = n
end
local now = redis.call('TIME')
return {totals, now[1], now[2]}
"""

_SYNC_STATEMENT = "SELECT * FROM bulkhead_rate_sync($1, $2, $3, $4, $5)"


@dataclass(frozen=True, slots=True)
class Push:
    """Requests one replica counted against a bucket in one window since its last sync.

    Attributes:
        scope: The tenant's (the only way a tenant reaches the store).
        bucket: Counter key within the tenant (`tenant`, `user:...`, `key:...`).
        window: Fixed window the requests were counted in (minutes since the epoch).
        delta: How many.
    """

    scope: TenantScope
    bucket: str
    window: int
    delta: int


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    """What the store answered to one batch.

    Attributes:
        totals: Each bucket's shared count by (tenant, bucket, window), this batch included.
            A push whose window the store has left behind may be missing.
        tokens: Tokens charged per asked tenant: (UTC day as days since the epoch, tokens).
        store_time: The store's clock, seconds since the epoch (None: not read).
        token_error: Why the token totals could not be read while the counts went through
            (Redis up, Postgres down); None otherwise.
    """

    totals: dict[tuple[str, str, int], int]
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    store_time: float | None = None
    token_error: BaseException | None = None


class CounterStore(Protocol):
    """Counts requests per bucket in shared fixed windows."""

    async def hit(self, scope: TenantScope, keys: list[str], *, with_tokens: bool) -> Counts:
        """Count one request of `scope`'s tenant against each of `keys`; read today's tokens too.

        The tenant comes from the scope only: in Postgres the counting functions arm RLS for
        the tenant they are given, so a bare id string must not reach them.
        """
        ...

    async def sync(self, pushes: Sequence[Push], tokens_for: Sequence[TenantScope]) -> SyncAnswer:
        """Add every push to its window's count and read the totals back, in one round trip.

        `tokens_for` names the tenants whose token total for today is read too.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class StoreHealth:
    """Logs a counter store's outages once each: a warning when it goes, an info line when back.

    One per limiter (a replica's requests and its syncs share it), so an outage is one
    warning however many requests run into it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """Whether the last attempt to reach the store failed."""
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """Note a failed attempt; the first of an outage is logged."""
        if self._since is None:
            self._since = self._clock()
            unexpected = not isinstance(exc, STORE_DOWN)
            _log.warning(
                "rate-limit store unavailable (%s: %s): until it is back each replica admits on"
                " its own counts (limits.admission local) or admits every request (exact)",
                type(exc).__name__,
                exc,
                exc_info=exc if unexpected else None,
            )

    def recovered(self) -> None:
        """Note a successful attempt; the first after an outage is logged."""
        if self._since is not None:
            _log.info("rate-limit store reachable again after %.1f s", self._clock() - self._since)
            self._since = None


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

    async def sync(self, pushes: Sequence[Push], tokens_for: Sequence[TenantScope]) -> SyncAnswer:
        """One statement (`bulkhead_rate_sync`) for the whole batch and the token totals."""
        rows = await self._pool.fetch(
            _SYNC_STATEMENT,
            [p.scope.tenant_id for p in pushes],
            [p.bucket for p in pushes],
            [p.window for p in pushes],
            [p.delta for p in pushes],
            [scope.tenant_id for scope in tokens_for],
        )
        answer = _sync_answer(rows)
        return SyncAnswer(
            totals=answer.totals,
            tokens=answer.tokens,
            store_time=rows[0]["o_now"] if rows else None,
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
        self._sync_script = client.register_script(_SYNC_SCRIPT)
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
        prefixes = [_prefix(tenant_id, key) for key in keys]
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

    async def sync(self, pushes: Sequence[Push], tokens_for: Sequence[TenantScope]) -> SyncAnswer:
        """One script call for the counts; the token totals from Postgres alongside it.

        Raises:
            RedisConnectionError: Redis is unreachable (nothing was counted).
        """
        counts, tokens = await asyncio.gather(
            self._count(pushes), self._read_tokens(tokens_for), return_exceptions=True
        )
        if isinstance(counts, BaseException):
            raise counts
        if isinstance(tokens, BaseException):
            return SyncAnswer(counts.totals, {}, counts.store_time, token_error=tokens)
        return SyncAnswer(counts.totals, tokens, counts.store_time)

    async def _count(self, pushes: Sequence[Push]) -> SyncAnswer:
        if not pushes:
            return SyncAnswer(totals={})
        keys = [f"{_prefix(p.scope.tenant_id, p.bucket)}:{p.window}" for p in pushes]
        totals, seconds, micros = await self._sync_script(
            keys=keys, args=[2 * WINDOW_SECONDS, *(p.delta for p in pushes)]
        )
        return SyncAnswer(
            totals={
                (p.scope.tenant_id, p.bucket, p.window): int(n)
                for p, n in zip(pushes, totals, strict=True)
            },
            store_time=int(seconds) + int(micros) / 1e6,
        )

    async def _read_tokens(self, tokens_for: Sequence[TenantScope]) -> dict[str, tuple[int, int]]:
        if not tokens_for:
            return {}
        rows = await self._pool.fetch(
            _SYNC_STATEMENT, [], [], [], [], [scope.tenant_id for scope in tokens_for]
        )
        return _sync_answer(rows).tokens

    def _remember(self, tenant_id: str, now: float, tokens: int) -> None:
        if len(self._tokens) >= _MAX_CACHED_TENANTS:
            self._tokens = {t: v for t, v in self._tokens.items() if v[0] > now}
        self._tokens[tenant_id] = (now + self._tokens_ttl, tokens)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()


def _prefix(tenant_id: str, key: str) -> str:
    return f"bulkhead:rl:{{{tenant_id}}}:{key}"


def _sync_answer(rows: list[asyncpg.Record]) -> SyncAnswer:
    totals: dict[tuple[str, str, int], int] = {}
    tokens: dict[str, tuple[int, int]] = {}
    for row in rows:
        if row["o_bucket"] is None:
            tokens[row["o_tenant"]] = (row["o_window"], row["o_count"])
        else:
            totals[(row["o_tenant"], row["o_bucket"], row["o_window"])] = row["o_count"]
    return SyncAnswer(totals=totals, tokens=tokens)


def _counts(keys: list[str], hits: list[Any], reset: Any, tokens: int | None) -> Counts:
    return Counts(
        hits={key: int(n) for key, n in zip(keys, hits, strict=True)},
        reset_seconds=float(reset),
        tokens_today=tokens,
    )
