"""Verifying API keys on the hot path: a per-replica cache kept honest by LISTEN/NOTIFY.

The first use of a key reads its row through `bulkhead_api_key()` (a SECURITY DEFINER function,
see migration 0002: the tenant is not known yet, and `api_keys` has RLS). The row is cached, so
later requests cost one HMAC and a dict read. Any revoke or rotate sends `NOTIFY
bulkhead_credentials`; every replica evicts the key at once. The cache TTL is only a safety net
for a lost listener connection, on whose loss the whole cache is dropped as well.

`last_used_at` is batched: uses are collected in memory and written every few seconds in one
statement per tenant, never a write per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.db.pool import tenant_transaction
from app.identity.api_keys import CHANNEL, ApiKeyHasher, parse_key
from app.identity.network import IPAddress, IPNetwork, in_networks
from app.problems import CredentialRefused, Unauthenticated
from app.tenancy.scope import Role, TenantScope

_log = logging.getLogger(__name__)
MISSING_CACHE_SECONDS = 30.0
MISSING_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """The verification-relevant part of an `api_keys` row."""

    id: str
    tenant_id: str
    name: str
    secret_hmac: bytes
    roles: frozenset[Role]
    allowed_cidrs: tuple[IPNetwork, ...]
    expires_at: float | None
    revoked: bool
    cached_at: float


class ApiKeyStore:
    """Resolves and checks API keys for the authentication middleware."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        hasher: ApiKeyHasher,
        *,
        cache_seconds: float,
        flush_seconds: float,
    ) -> None:
        self._pool = pool
        self.hasher = hasher
        self._cache_seconds = cache_seconds
        self._flush_seconds = flush_seconds
        self._cache: dict[str, ApiKeyRecord] = {}
        self._missing: dict[str, float] = {}
        self._used: dict[str, str] = {}
        self._listener: asyncpg.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.evictions = 0
        # Bumped on every NOTIFY: a row read while a change was announced is not cached,
        # or a lookup racing a revocation could cache the pre-revocation row until the TTL.
        self._generation = 0
        self._dsn = ""
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self, dsn: str) -> None:
        """Listen for credential changes and start the `last_used_at` flusher."""
        self._dsn = dsn
        await self._listen()
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="api-key-last-used"
        )

    async def _listen(self) -> None:
        listener = await asyncpg.connect(self._dsn)
        await listener.add_listener(CHANNEL, self._on_notify)
        listener.add_termination_listener(self._on_listener_lost)
        self._listener = listener
        # Whatever changed while nobody listened is unknown: start from an empty cache.
        self._generation += 1
        self._cache.clear()

    async def close(self) -> None:
        """Write pending `last_used_at` values and stop listening."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush_last_used()
        if self._listener is not None:
            self._listener.remove_termination_listener(self._on_listener_lost)
            await self._listener.close()
            self._listener = None

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        self.evict(str(payload))

    def _on_listener_lost(self, _connection: Any) -> None:
        # Without the listener a revocation could be missed: forget everything cached, read
        # every key from Postgres until listening again, and reconnect in the background.
        _log.error("credential listener connection lost; dropping the API key cache")
        self._listener = None
        self._generation += 1
        self._cache.clear()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name="api-key-listener-reconnect"
            )

    async def _reconnect(self) -> None:
        delay = 0.1
        while self._listener is None and not self._closing:
            try:
                await self._listen()
                _log.info("credential listener reconnected")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def evict(self, key_id: str) -> None:
        """Forget a cached key (called on NOTIFY)."""
        self._generation += 1
        if self._cache.pop(key_id, None) is not None:
            self.evictions += 1

    async def record(self, key_id: str) -> ApiKeyRecord | None:
        """The key's record, from cache or from Postgres."""
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached.cached_at < self._cache_seconds:
            return cached
        missing_since = self._missing.get(key_id)
        if missing_since is not None and now - missing_since < MISSING_CACHE_SECONDS:
            # A client retrying a key that never existed costs no query. Ids are random, so
            # a key created later cannot have been looked up (and remembered) before.
            return None
        generation = self._generation
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow("SELECT * FROM bulkhead_api_key($1)", key_id)
        if row is None:
            self._cache.pop(key_id, None)
            if len(self._missing) >= MISSING_CACHE_SIZE:
                del self._missing[next(iter(self._missing))]
            self._missing[key_id] = now
            return None
        record = ApiKeyRecord(
            id=row["id"],
            tenant_id=row["tenant_id"],
            name=row["name"],
            secret_hmac=bytes(row["secret_hmac"]),
            roles=Role.known(row["scopes"]),
            allowed_cidrs=tuple(row["allowed_cidrs"]),
            expires_at=row["expires_at"].timestamp() if row["expires_at"] else None,
            revoked=row["revoked_at"] is not None,
            cached_at=now,
        )
        if generation == self._generation and self._listener is not None:
            self._cache[key_id] = record
        return record

    async def verify(self, token: str, *, client: IPAddress | None) -> ApiKeyRecord:
        """Check a presented `bk_` key.

        Raises:
            Unauthenticated: Malformed, unknown, wrong secret, revoked or expired key.
            CredentialRefused: The client address is outside the key's CIDR allowlist.
        """
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthenticated("malformed API key", reason="malformed")
        key_id, secret = parsed
        record = await self.record(key_id)
        if record is None:
            raise Unauthenticated("unknown API key", reason="unknown_key")
        if not self.hasher.matches(secret, record.secret_hmac):
            raise Unauthenticated(
                "API key invalid", reason="bad_secret", tenant_id=record.tenant_id
            )
        self.check_usable(record, client=client)
        self._used[record.id] = record.tenant_id
        return record

    def check_usable(self, record: ApiKeyRecord, *, client: IPAddress | None) -> None:
        """Refuse a revoked, expired or out-of-network key (also for exchanged tokens).

        Raises:
            Unauthenticated: Revoked or expired.
            CredentialRefused: Client address outside the key's allowlist.
        """
        if record.revoked:
            raise Unauthenticated("API key revoked", reason="revoked", tenant_id=record.tenant_id)
        if record.expires_at is not None and time.time() >= record.expires_at:
            raise Unauthenticated("API key expired", reason="expired", tenant_id=record.tenant_id)
        if not in_networks(client, record.allowed_cidrs):
            raise CredentialRefused(
                "client address not allowed for this key",
                reason="key_cidr",
                tenant_id=record.tenant_id,
            )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush_last_used()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                _log.exception("writing api_keys.last_used_at failed; will retry")

    async def flush_last_used(self) -> None:
        """Write the keys used since the last flush (one UPDATE per tenant)."""
        if not self._used:
            return
        used, self._used = self._used, {}
        by_tenant: dict[str, list[str]] = {}
        for key_id, tenant_id in used.items():
            by_tenant.setdefault(tenant_id, []).append(key_id)
        try:
            async with self._pool.acquire() as connection:
                for tenant_id, key_ids in by_tenant.items():
                    scope = TenantScope.system(tenant_id, actor="bulkhead:api-key-usage")
                    async with tenant_transaction(connection, scope=scope):
                        await connection.execute(
                            "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::text[])",
                            key_ids,
                        )
        except BaseException:
            for key_id, tenant_id in used.items():
                self._used.setdefault(key_id, tenant_id)
            raise
