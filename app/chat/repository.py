"""SQL for conversations and messages. Runs inside tenant transactions (RLS)."""

from __future__ import annotations

import uuid
from typing import Any

from app.db.pool import Connection


async def conversation_exists(
    connection: Connection, *, conversation_id: uuid.UUID, user_id: str
) -> bool:
    """Whether the user owns this conversation (RLS already limits it to the tenant)."""
    found: bool = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND user_id = $2)",
        conversation_id,
        user_id,
    )
    return found


async def save_exchange(
    connection: Connection,
    *,
    tenant_id: str,
    conversation_id: uuid.UUID,
    user_id: str,
    question: str,
    answer_id: uuid.UUID,
    answer: str,
    citations: list[dict[str, Any]],
    provider: str,
    model: str,
) -> None:
    """Append a question and its answer to a conversation, creating it if new."""
    await connection.execute(
        """
        INSERT INTO conversations (id, tenant_id, user_id) VALUES ($1, $2, $3)
        ON CONFLICT (id) DO UPDATE SET updated_at = now()
        """,
        conversation_id,
        tenant_id,
        user_id,
    )
    await connection.executemany(
        """
        INSERT INTO messages (id, tenant_id, conversation_id, role, content, citations,
                              provider, model)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        [
            (uuid.uuid4(), tenant_id, conversation_id, "user", question, [], None, None),
            (
                answer_id,
                tenant_id,
                conversation_id,
                "assistant",
                answer,
                citations,
                provider,
                model,
            ),
        ],
    )


async def conversations_for_export(
    connection: Connection, *, tenant_id: str
) -> list[dict[str, Any]]:
    """Every conversation of the tenant with its messages in order, as plaintext (offboarding).

    Conversation content is read through this module so that content encryption stays the
    repository's business: callers always get plaintext.
    """
    conversations = await connection.fetch(
        "SELECT id, user_id, created_at, updated_at FROM conversations WHERE tenant_id = $1"
        " ORDER BY created_at, id",
        tenant_id,
    )
    messages = await connection.fetch(
        "SELECT id, conversation_id, role, content, citations, provider, model, created_at"
        " FROM messages WHERE tenant_id = $1"
        # A question and its answer share one transaction's timestamp: question first.
        " ORDER BY created_at, role = 'assistant', id",
        tenant_id,
    )
    by_conversation: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for message in messages:
        item = dict(message)
        by_conversation.setdefault(item.pop("conversation_id"), []).append(item)
    return [{**dict(row), "messages": by_conversation.get(row["id"], [])} for row in conversations]
