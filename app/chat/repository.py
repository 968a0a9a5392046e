"""SQL for conversations and messages. Runs inside tenant transactions (RLS).

Message content is sealed with the tenant's data key (`app/chat/crypto.py`) on the way in and
opened on the way out: every read function here returns plaintext turns, so callers (the
conversation API, GDPR export, tenant offboarding export) never handle ciphertext.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.chat.crypto import MessageSealer
from app.db.pool import Connection
from app.llm.run import AttemptRecord
from app.tenancy.scope import TenantScope


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message, decrypted.

    Attributes:
        citations: `{"marker","document_id","chunk_id"}` for each source the answer cites.
        context: The retrieved passages the answer was grounded in (assistant turns).
    """

    id: uuid.UUID
    conversation_id: uuid.UUID
    role: str
    text: str
    citations: list[dict[str, Any]]
    context: list[dict[str, Any]]
    provider: str | None
    model: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation without its messages."""

    id: uuid.UUID
    user_id: str
    created_at: datetime
    updated_at: datetime
    messages: int


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


@dataclass(frozen=True, slots=True)
class Exchange:
    """A question and its answer, to be sealed and appended to a conversation.

    Attributes:
        citations: `{"marker","document_id","chunk_id"}` for each source the answer cites.
        context: The retrieved passages the answer was grounded in.
    """

    conversation_id: uuid.UUID
    question: str
    answer_id: uuid.UUID
    answer: str
    citations: list[dict[str, Any]]
    context: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class TurnUsage:
    """A turn's usage ledger rows (`usage`): one per provider call or skipped chain entry.

    Who asked (tenant, user, credential) comes from the caller's scope.

    Attributes:
        attempts: Every call the request made and every entry it skipped, in order.
        final: Index in `attempts` of the row the request ended with: its answer, or the
            failure it ended with. Only that row carries the tokens and the cost.
    """

    attempts: tuple[AttemptRecord, ...]
    final: int
    input_tokens: int
    output_tokens: int
    trace_id: str
    cost_usd: float


class DataKeyChanged(Exception):
    """The data key the exchange was sealed with is no longer the tenant's (rotated, gone)."""


_SAVE_TURN = """
SELECT bulkhead_save_turn($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                          $16, $17, $18, $19)
"""


async def save_turn(
    executor: Connection | asyncpg.Pool,
    *,
    scope: TenantScope,
    usage: TurnUsage,
    exchange: Exchange | None = None,
    sealer: MessageSealer | None = None,
) -> None:
    """Append `exchange` (sealed by `sealer`) and record `usage`, in one statement.

    The tenant, the user (who owns the conversation and is charged) and the credential come
    from `scope`. `bulkhead_save_turn` (migrations 0006, 0008) arms RLS for the tenant itself,
    so `executor` may be the pool or a connection outside any transaction (inside one, the
    tenant setting then lasts until that transaction ends). Without `exchange`, only the usage
    rows are written.

    Raises:
        DataKeyChanged: `sealer`'s key is not the tenant's any more; nothing was written.
    """
    tenant_id = scope.tenant_id
    sealed_question = sealed_answer = question_id = None
    conversation_id = answer_id = None
    if exchange is not None:
        if sealer is None or sealer.tenant_id != tenant_id:
            raise ValueError("an exchange needs the tenant's sealer")
        conversation_id, answer_id = exchange.conversation_id, exchange.answer_id
        question_id = uuid.uuid4()
        sealed_question = sealer.seal(
            {"text": exchange.question},
            conversation_id=conversation_id,
            message_id=question_id,
            role="user",
        )
        sealed_answer = sealer.seal(
            {"text": exchange.answer, "citations": exchange.citations, "context": exchange.context},
            conversation_id=conversation_id,
            message_id=answer_id,
            role="assistant",
        )
    try:
        await executor.execute(
            _SAVE_TURN,
            tenant_id,
            scope.subject,
            scope.credential_id,
            conversation_id,
            sealer.kek_id if sealer and exchange else None,
            sealer.wrapped_key if sealer and exchange else None,
            question_id,
            sealed_question,
            answer_id,
            sealed_answer,
            [a.provider for a in usage.attempts],
            [a.model for a in usage.attempts],
            [a.outcome for a in usage.attempts],
            [a.latency_ms for a in usage.attempts],
            usage.final + 1,  # SQL arrays count from 1
            usage.input_tokens,
            usage.output_tokens,
            usage.trace_id,
            usage.cost_usd,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == "BK001":
            raise DataKeyChanged(f"tenant {tenant_id!r}: the data key changed") from None
        raise


def _turn(row: asyncpg.Record, sealer: MessageSealer) -> Turn:
    if row["sealed"] is None:
        # Written before content was sealed (migration 0004).
        content: dict[str, Any] = {"text": row["content"], "citations": row["citations"] or []}
    else:
        content = sealer.open(
            bytes(row["sealed"]),
            conversation_id=row["conversation_id"],
            message_id=row["id"],
            role=row["role"],
        )
    return Turn(
        id=row["id"],
        conversation_id=row["conversation_id"],
        role=row["role"],
        text=content.get("text", ""),
        citations=content.get("citations", []),
        context=content.get("context", []),
        provider=row["provider"],
        model=row["model"],
        created_at=row["created_at"],
    )


async def read_turns(
    connection: Connection,
    *,
    sealer: MessageSealer,
    conversation_ids: Sequence[uuid.UUID] | None = None,
    user_id: str | None = None,
    last: int | None = None,
) -> list[Turn]:
    """Messages in plaintext, oldest first, by conversation then time.

    Args:
        connection: A transaction scoped to `sealer.tenant_id` (RLS limits rows to it).
        sealer: The tenant's sealer, from `ConversationCipher.sealer`.
        conversation_ids: Only these conversations (None: all of the tenant's).
        user_id: Only conversations this user owns (None: any user's).
        last: Only the last N messages (across the selection).

    Raises:
        ConversationDecryptionError: A sealed message fails authentication.
    """
    rows = await connection.fetch(
        """
        SELECT * FROM (
            SELECT m.id, m.conversation_id, m.role, m.content, m.citations, m.sealed,
                   m.provider, m.model, m.created_at
            FROM messages m JOIN conversations c ON c.id = m.conversation_id
            WHERE ($1::uuid[] IS NULL OR m.conversation_id = ANY($1))
              AND ($2::text IS NULL OR c.user_id = $2)
            ORDER BY m.created_at DESC, m.id DESC
            LIMIT $3
        ) recent ORDER BY conversation_id, created_at, id
        """,
        list(conversation_ids) if conversation_ids is not None else None,
        user_id,
        last,
    )
    return [_turn(row, sealer) for row in rows]


_SUMMARY = """
    SELECT c.id, c.user_id, c.created_at, c.updated_at,
           (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages
    FROM conversations c
"""


def _summary(r: asyncpg.Record) -> ConversationSummary:
    return ConversationSummary(
        id=r["id"],
        user_id=r["user_id"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        messages=r["messages"],
    )


async def find_conversation(
    connection: Connection, *, conversation_id: uuid.UUID, user_id: str
) -> ConversationSummary | None:
    """The user's conversation by id, or None (another user's is None too)."""
    row = await connection.fetchrow(
        _SUMMARY + " WHERE c.id = $1 AND c.user_id = $2", conversation_id, user_id
    )
    return None if row is None else _summary(row)


async def list_conversations(
    connection: Connection,
    *,
    user_id: str | None,
    limit: int | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[ConversationSummary]:
    """Conversations, most recently updated first (no content, so no key needed).

    Args:
        connection: A tenant-scoped transaction.
        user_id: Only this user's (None: every user of the tenant).
        limit: At most this many.
        before: Keyset cursor: only conversations after `(updated_at, id)` in this order.
    """
    rows = await connection.fetch(
        _SUMMARY
        + """
        WHERE ($1::text IS NULL OR c.user_id = $1)
          AND ($2::timestamptz IS NULL OR (c.updated_at, c.id) < ($2, $3::uuid))
        ORDER BY c.updated_at DESC, c.id DESC
        LIMIT $4
        """,
        user_id,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [_summary(r) for r in rows]


async def delete_conversation(
    connection: Connection, *, conversation_id: uuid.UUID, user_id: str
) -> bool:
    """Delete one of the user's conversations and its messages; False if it is not theirs."""
    status: str = await connection.execute(
        "DELETE FROM conversations WHERE id = $1 AND user_id = $2", conversation_id, user_id
    )
    return status != "DELETE 0"


async def delete_user_conversations(connection: Connection, *, user_id: str) -> int:
    """Delete every conversation (and message) of a user of the tenant; returns how many."""
    status: str = await connection.execute("DELETE FROM conversations WHERE user_id = $1", user_id)
    return int(status.split()[-1])
