"""What a chain is made of: manifest entries with their providers.

Also the stand-in for a provider this deployment cannot call, which fails over at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from app.llm.provider import (
    Completion,
    CompletionRequest,
    Endpoint,
    Provider,
    ProviderError,
    StreamEvent,
)
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import TenantScope


class UnavailableProvider:
    """A chain entry whose provider this deployment cannot call; it fails over at once."""

    endpoint = Endpoint("localhost", 0)

    def __init__(self, name: str, why: str = "is not configured") -> None:
        self.name = name
        self._why = why

    async def complete(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> Completion:
        """Always fail with reason `not_configured`.

        Raises:
            ProviderError: Always.
        """
        raise ProviderError(f"provider {self.name!r} {self._why}", reason="not_configured")

    async def stream(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Always fail with reason `not_configured`.

        Raises:
            ProviderError: Always.
        """
        raise ProviderError(f"provider {self.name!r} {self._why}", reason="not_configured")
        yield ""  # pragma: no cover - makes this an async generator

    async def invalidate_key(self, *, scope: TenantScope) -> None:
        """Nothing to forget."""

    async def aclose(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True, slots=True)
class ChainLink:
    """A manifest chain entry with the provider that serves it."""

    entry: ChainEntry
    provider: Provider
