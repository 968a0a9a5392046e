"""Provider keys: the `SecretResolver` seam the router resolves keys through, and scrubbing.

The router asks for a tenant's key on every attempt and invalidates it when the provider
answers 401/403, so a rotated key is picked up after one refetch. The secrets package's
`SecretCache` implements `SecretResolver` (wired in `app/resources.py`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

from app.secrets.scrub import scrub as secrets_scrub

if TYPE_CHECKING:
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


def scrub(text: str, *secrets: str) -> str:
    """`text` without the given secret values or anything shaped like a provider key.

    Every provider error message goes through here before it reaches a span, a log line, an
    audit row or a response: the real APIs echo (part of) a refused key in their 401 body.
    The secrets package's scrubber runs last (registered values, credential patterns).
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return secrets_scrub(_KEY_SHAPES.sub(REDACTED, text))
