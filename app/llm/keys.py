"""Provider keys: the `SecretResolver` seam the router resolves keys through, and scrubbing.

The router asks for a tenant's key on every attempt and invalidates it when the provider
answers 401/403, so a rotated key is picked up after one refetch. The secrets package's
`SecretCache` implements `SecretResolver`; until it lands, `BackendSecretResolver` adapts any
`SecretsBackend` with a short in-process cache.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.secrets.backend import SecretsBackend
    from app.secrets.values import SecretRef, SecretValue
    from app.tenancy.scope import TenantScope

# OpenAI (`sk-`, `sk-proj-`) and Anthropic (`sk-ant-`) key shapes, plus Bulkhead API keys.
_KEY_SHAPES = re.compile(r"\b(?:sk-ant-|sk-|bk_)[A-Za-z0-9_\-]{6,}")
REDACTED = "[redacted]"


class SecretResolver(Protocol):
    """Resolves secret refs for a tenant and forgets a value the provider refused."""

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        """The current value of `ref`.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            SecretNotFound: Nothing is stored under `ref`.
        """
        ...

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        """Drop any cached value of `ref`, so the next `get` reads the backend."""
        ...


class BackendSecretResolver:
    """`SecretResolver` over a `SecretsBackend`, caching values for `ttl_seconds`."""

    def __init__(self, backend: SecretsBackend, *, ttl_seconds: float = 30.0) -> None:
        self._backend = backend
        self._ttl = ttl_seconds
        self._cache: dict[tuple[str, str], tuple[float, SecretValue]] = {}

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        """The value of `ref`, from the cache while fresh.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            SecretNotFound: Nothing is stored under `ref`.
        """
        key = (scope.tenant_id, str(ref))
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        value = await self._backend.get(ref, scope=scope)
        self._cache[key] = (now + self._ttl, value)
        return value

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        """Forget the cached value of `ref` for `scope`'s tenant."""
        self._cache.pop((scope.tenant_id, str(ref)), None)


def scrub(text: str, *secrets: str) -> str:
    """`text` without the given secret values or anything shaped like a provider key.

    Every provider error message goes through here before it reaches a span, a log line, an
    audit row or a response: the real APIs echo (part of) a refused key in their 401 body.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _KEY_SHAPES.sub(REDACTED, text)
