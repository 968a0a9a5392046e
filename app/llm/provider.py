"""The Provider seam: one completion call (plain or streamed) against one model."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from app.tenancy.scope import TenantScope


@dataclass(frozen=True, slots=True)
class ContextChunk:
    """A retrieved chunk as the model sees it, numbered for citation markers `[n]`."""

    marker: int
    document_id: str
    chunk_id: str
    title: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class HistoryTurn:
    """An earlier message of the conversation, sent before the question."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """What a provider is asked: a question grounded in numbered context.

    Attributes:
        history: Earlier turns, oldest first, already trimmed to the model's budget.
        instructions: The caller's own system instructions (OpenAI-compatible endpoint),
            sent after Bulkhead's system prompt, which they cannot replace.
    """

    question: str
    context: tuple[ContextChunk, ...]
    model: str
    history: tuple[HistoryTurn, ...] = ()
    instructions: str = ""


@dataclass(frozen=True, slots=True)
class Completion:
    """A provider's answer and its accounting."""

    text: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    response_id: str


class ProviderError(Exception):
    """A failed attempt; `reason` is a stable code used in spans, metrics and failover.

    The message is already scrubbed of key material (it may quote a provider's error body).

    Attributes:
        reason: Stable failure code (`rate_limited`, `server_error`, `timeout`, `auth`...).
        retry_after: Seconds the provider asked us to wait (429/503 `Retry-After`), if any.
        status: The provider's HTTP status, when it answered with one.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


# A streamed answer is text deltas followed by exactly one Completion (the whole text, usage).
StreamEvent = str | Completion


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a provider's requests go, for `server.address` / `server.port` on spans."""

    address: str
    port: int


class Provider(Protocol):
    """A model endpoint that answers grounded questions, with the tenant's key."""

    name: str
    endpoint: Endpoint

    async def complete(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> Completion:
        """Answer `request` within `time_budget` seconds.

        Raises:
            ProviderError: The attempt failed; the chain decides whether to retry or fail over.
        """
        ...

    def stream(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream text deltas for `request`, then one final `Completion`.

        Raises:
            ProviderError: The attempt failed (before or during the stream).
        """
        ...

    async def invalidate_key(self, *, scope: TenantScope) -> None:
        """Forget the tenant's cached key after the provider refused it (401/403)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
