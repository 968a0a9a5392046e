"""The Provider seam: one completion call against one model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
class CompletionRequest:
    """What a provider is asked: a question grounded in numbered context."""

    question: str
    context: tuple[ContextChunk, ...]
    model: str


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
    """A failed attempt; `reason` is a stable code used in spans, metrics and failover."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Provider(Protocol):
    """A model endpoint that answers grounded questions."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer `request`.

        Raises:
            ProviderError: The attempt failed; the chain may try the next entry.
        """
        ...
