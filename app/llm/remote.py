"""What the OpenAI and Anthropic providers share: the prompt, the key, the client cache."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Generic, TypeVar
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
ClientT = TypeVar("ClientT")


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


class KeyedClients(Generic[ClientT]):
    """The tenant's SDK client for one chain entry, rebuilt when its key changes.

    SDK clients hold a connection pool, so they are reused across requests; only the client
    for the latest key is kept (a rotated-away key's client is dropped).
    """

    def __init__(self, entry: ChainEntry, resolver: SecretResolver) -> None:
        if entry.secret is None:
            raise ValueError(f"chain entry {entry.provider}/{entry.model} names no secret")
        self.entry = entry
        self.ref = SecretRef.parse(entry.secret)
        self._resolver = resolver
        self._current: tuple[str, ClientT] | None = None
        self._made: list[ClientT] = []

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

    def client(self, key: SecretValue) -> ClientT | None:
        """The cached client for `key`, or None when it must be built."""
        digest = hashlib.sha256(key.reveal().encode()).hexdigest()
        if self._current is not None and self._current[0] == digest:
            return self._current[1]
        return None

    def remember(self, key: SecretValue, client: ClientT) -> ClientT:
        """Keep `client` as the one for `key`."""
        self._current = (hashlib.sha256(key.reveal().encode()).hexdigest(), client)
        self._made.append(client)
        return client

    def made(self) -> list[ClientT]:
        """Every client built so far (a rotated-away key's client may still be in use)."""
        return list(self._made)

    async def invalidate(self, *, scope: TenantScope) -> None:
        """Forget the key (the provider refused it) so the next attempt refetches it."""
        await self._resolver.invalidate(self.ref, scope=scope)
