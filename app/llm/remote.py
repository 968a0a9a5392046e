"""What the OpenAI and Anthropic providers share: the prompt, the endpoint, the key."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from app.llm.keys import SecretResolver, scrub
from app.llm.provider import CompletionRequest, Endpoint, ProviderError
from app.secrets.backend import SecretDecryptionError, SecretNotFound, SecretsBackendUnavailable
from app.secrets.cache import SecretsUnavailable
from app.secrets.values import SecretAccessDenied, SecretRef, SecretValue

if TYPE_CHECKING:
    from app.tenancy.manifest import ChainEntry
    from app.tenancy.scope import TenantScope

SYSTEM_PROMPT = (
    "Answer the question using only the numbered context passages. Cite each statement with"
    " the passage's marker, like [1]. If the context does not contain the answer, say so."
)


def build_prompt(request: CompletionRequest) -> str:
    """The user turn: numbered context passages, then the question."""
    passages = "\n\n".join(f"[{c.marker}] {c.title}\n{c.text}" for c in request.context)
    return f"Context:\n{passages or '(none)'}\n\nQuestion: {request.question}"


def endpoint_of(base_url: str | None, default_host: str) -> Endpoint:
    """`server.address` and `server.port` of a base URL (the provider's own when None)."""
    if not base_url:
        return Endpoint(default_host, 443)
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Endpoint(parts.hostname or default_host, port)


class EntryKey:
    """Resolves the tenant's key for one chain entry, and forgets it when it is refused."""

    def __init__(self, entry: ChainEntry, resolver: SecretResolver) -> None:
        if entry.secret is None:
            raise ValueError(f"chain entry {entry.provider}/{entry.model} names no secret")
        self.entry = entry
        self.ref = SecretRef.parse(entry.secret)
        self._resolver = resolver

    async def key(self, *, scope: TenantScope) -> SecretValue:
        """The tenant's key for this entry.

        Raises:
            ProviderError: The key cannot be resolved (`secret_unavailable`).
        """
        try:
            return await self._resolver.get(self.ref, scope=scope)
        except (
            SecretNotFound,
            SecretAccessDenied,
            SecretDecryptionError,
            SecretsBackendUnavailable,
            SecretsUnavailable,
        ) as exc:
            # The entry cannot be called; the next one (ultimately `local`) may still answer.
            raise ProviderError(
                scrub(f"{type(exc).__name__}: {exc}"), reason="secret_unavailable"
            ) from None

    async def invalidate(self, *, scope: TenantScope) -> None:
        """Forget the key (the provider refused it) so the next attempt refetches it."""
        await self._resolver.invalidate(self.ref, scope=scope)
