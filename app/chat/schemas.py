"""Request and response bodies of `POST /v1/chat`."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/chat` body."""

    message: Annotated[str, msgspec.Meta(min_length=1)]
    conversation_id: uuid.UUID | None = None
    stream: bool = False
    top_k: int | None = None
    filter: dict[str, Any] | None = None
    tenant_id: str | None = None


class Citation(msgspec.Struct):
    """A source the answer cites with `[marker]`."""

    marker: int
    document_id: str
    chunk_id: str
    title: str
    score: float
    snippet: str


class Usage(msgspec.Struct):
    """Tokens the answer cost."""

    input_tokens: int
    output_tokens: int


class ChatResponse(msgspec.Struct):
    """`POST /v1/chat` response."""

    conversation_id: str
    message_id: str
    answer: str
    citations: list[Citation]
    provider: str
    model: str
    usage: Usage
    trace_id: str
