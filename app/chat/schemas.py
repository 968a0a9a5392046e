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


class ConversationItem(msgspec.Struct):
    """A conversation in a listing (no content)."""

    id: str
    created_at: str
    updated_at: str
    messages: int


class ConversationList(msgspec.Struct):
    """`GET /v1/conversations` response."""

    conversations: list[ConversationItem]
    next_cursor: str | None


class StoredMessage(msgspec.Struct):
    """A message of a conversation, decrypted."""

    id: str
    role: str
    content: str
    citations: list[dict[str, Any]]
    provider: str | None
    model: str | None
    created_at: str


class ConversationDetail(msgspec.Struct):
    """`GET /v1/conversations/{id}` response."""

    id: str
    created_at: str
    updated_at: str
    messages: list[StoredMessage]


class UserDataDeleted(msgspec.Struct):
    """`DELETE /v1/admin/users/{user_id}/data` response."""

    user_id: str
    conversations_deleted: int
