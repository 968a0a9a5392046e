"""SecretCache: the request path's only way to a secret value (docs/architecture.md, Isolation).

TTL cache in front of any `SecretsBackend`, with single flight (N concurrent misses for one
ref make one backend call), stale serving through a backend outage up to a maximum staleness
(then fail closed with 503), and explicit invalidation when a provider rejects a value.
Every fetched value is registered with the scrubber.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.problems import ApiError
from app.secrets.backend import SecretNotFound, SecretsBackendUnavailable
from app.secrets.scrub import register_secret, scrub_exception
from app.secrets.values import ensure_ref_allowed

if TYPE_CHECKING:
    from app.secrets.backend import SecretsBackend
    from app.secrets.values import SecretRef, SecretValue
    from app.tenancy.scope import TenantScope

_log = logging.getLogger(__name__)

PlatformRefs = Callable[[str], frozenset[str]]
"""Tenant id -> the platform refs its manifest opts into."""


def _no_platform_refs(_tenant_id: str) -> frozenset[str]:
    return frozenset()


class SecretsUnavailable(ApiError):
    """The secrets backend is down and the cached value (if any) is older than allowed."""

    status, code, title = 503, "secrets_unavailable", "Secrets unavailable"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


@dataclass(slots=True)
class _Entry:
    value: SecretValue
    fetched_at: float


# Outages: the backend's own signal, plus transport errors a backend failed to wrap.
_OUTAGES = (SecretsBackendUnavailable, OSError, TimeoutError)


class SecretCache:
    """A per-process cache of secret values in front of a `SecretsBackend`.

    Args:
        backend: The store to read through.
        ttl_seconds: How long a fetched value is served without asking the backend.
        max_stale_seconds: How long past its TTL a value is still served while the backend
            is unreachable; after that, `SecretsUnavailable`.
        platform_refs: Maps a tenant id to the platform refs its manifest opts into.
        retry_after_seconds: `Retry-After` of the 503 when failing closed.
        clock: Monotonic clock (tests move it).
    """

    def __init__(
        self,
        backend: SecretsBackend,
        *,
        ttl_seconds: float = 60.0,
        max_stale_seconds: float = 300.0,
        platform_refs: PlatformRefs = _no_platform_refs,
        retry_after_seconds: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self._ttl = ttl_seconds
        self._max_stale = max_stale_seconds
        self._platform_refs = platform_refs
        self._retry_after = retry_after_seconds
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[SecretValue]] = {}
        self.backend_calls = 0
        """Backend reads made so far (benchmarks and tests read it)."""

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        """The value of `ref` for `scope`'s tenant, from cache when fresh.

        Raises:
            SecretAccessDenied: `ref` is neither under the tenant's prefix nor an opted-in
                platform ref (checked before the cache is consulted).
            SecretNotFound: The backend has no such secret.
            SecretDecryptionError: The stored value does not decrypt.
            SecretsUnavailable: The backend is down and no value young enough is cached.
        """
        platform_refs = (
            self._platform_refs(scope.tenant_id) if ref.tenant_id is None else frozenset()
        )
        ensure_ref_allowed(ref, scope=scope, platform_refs=platform_refs)
        key = str(ref)
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.fetched_at < self._ttl:
            return entry.value
        return await self._refresh(ref, scope=scope, platform_refs=platform_refs)

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        """Forget the cached value of `ref`, so the next `get` asks the backend.

        The provider layer calls this when a provider answers 401/403 with the value, then
        retries once with whatever `get` returns.

        Raises:
            SecretAccessDenied: `ref` is outside what `scope` may resolve.
        """
        platform_refs = (
            self._platform_refs(scope.tenant_id) if ref.tenant_id is None else frozenset()
        )
        ensure_ref_allowed(ref, scope=scope, platform_refs=platform_refs)
        self.forget(str(ref))

    async def refetch_rejected(
        self, ref: SecretRef, rejected: SecretValue, *, scope: TenantScope
    ) -> SecretValue | None:
        """After a provider answered 401/403 with `rejected`: refetch `ref` once.

        Concurrent requests that were all rejected with the same value share one refetch
        (the first invalidates; the rest find the new value, or join its single flight).

        Returns:
            The newer value to retry with, or None when the store still holds `rejected`
            (retrying would only be rejected again).

        Raises:
            SecretAccessDenied: `ref` is outside what `scope` may resolve.
            SecretNotFound: The secret was deleted.
            SecretsUnavailable: The backend is down beyond the maximum staleness.
        """
        entry = self._entries.get(str(ref))
        if entry is not None and entry.value == rejected:
            await self.invalidate(ref, scope=scope)
        current = await self.get(ref, scope=scope)
        return None if current == rejected else current

    def forget(self, ref: str) -> None:
        """Drop `ref` (as text) from the cache: change notifications from the backend."""
        self._entries.pop(ref, None)

    def clear(self) -> None:
        """Drop every cached value."""
        self._entries.clear()

    async def _refresh(
        self, ref: SecretRef, *, scope: TenantScope, platform_refs: frozenset[str]
    ) -> SecretValue:
        key = str(ref)
        task = self._inflight.get(key)
        if task is None:
            # The fetch is its own task: a cancelled caller must not cancel its followers'.
            task = asyncio.ensure_future(self._fetch(ref, scope=scope, platform_refs=platform_refs))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._fetch_done(key, done))
        return await asyncio.shield(task)

    def _fetch_done(self, key: str, task: asyncio.Future[SecretValue]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have been cancelled

    async def _fetch(
        self, ref: SecretRef, *, scope: TenantScope, platform_refs: frozenset[str]
    ) -> SecretValue:
        key = str(ref)
        self.backend_calls += 1
        try:
            value = await self.backend.get(ref, scope=scope, platform_refs=platform_refs)
        except SecretNotFound:
            self._entries.pop(key, None)
            raise
        except _OUTAGES as exc:
            entry = self._entries.get(key)
            if entry is not None and self._within_staleness(entry):
                _log.warning(
                    "secrets backend unavailable; serving '%s' %.0f s past its TTL: %s",
                    key,
                    self._clock() - entry.fetched_at - self._ttl,
                    scrub_exception(exc),
                )
                return entry.value
            raise SecretsUnavailable(
                "the secrets backend is unavailable; retry later", retry_after=self._retry_after
            ) from exc
        register_secret(value)
        self._entries[key] = _Entry(value=value, fetched_at=self._clock())
        return value

    def _within_staleness(self, entry: _Entry) -> bool:
        return self._clock() - entry.fetched_at < self._ttl + self._max_stale
