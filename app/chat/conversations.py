"""The caller's stored conversations: list, read, delete; and a user's data for GDPR.

Everything returned here is plaintext (decrypted through `repository`); nothing here writes.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.chat import repository
from app.chat.crypto import ConversationCipher
from app.chat.repository import ConversationSummary, Turn
from app.db.pool import Connection, tenant_transaction
from app.problems import NotFound, ValidationFailed
from app.tenancy.scope import TenantScope


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """One page of conversations and the cursor of the next (None on the last page)."""

    conversations: list[ConversationSummary]
    next_cursor: str | None


def encode_cursor(summary: ConversationSummary) -> str:
    """An opaque keyset cursor: after this conversation in `updated_at DESC, id DESC` order."""
    raw = f"{summary.updated_at.isoformat()}|{summary.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names.

    Raises:
        ValidationFailed: Not a cursor this service issued.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, ident = raw.partition("|")
        return datetime.fromisoformat(when), uuid.UUID(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationFailed("cursor: not a cursor from a previous page") from None


def turn_record(turn: Turn, *, with_context: bool) -> dict[str, Any]:
    """A message as the API and exports show it."""
    record: dict[str, Any] = {
        "id": str(turn.id),
        "role": turn.role,
        "content": turn.text,
        "citations": turn.citations,
        "provider": turn.provider,
        "model": turn.model,
        "created_at": turn.created_at.isoformat(),
    }
    if with_context:
        record["context"] = turn.context
    return record


async def user_export(
    connection: Connection, *, cipher: ConversationCipher, tenant_id: str, user_id: str
) -> AsyncIterator[dict[str, Any]]:
    """Everything stored about a user of the tenant, decrypted, as NDJSON-ready records.

    A `user` header record, one `conversation` record (messages, citations and the retrieved
    context each answer saw) per conversation, then one `usage` record per ledger row.

    Args:
        connection: A transaction scoped to `tenant_id`.
        cipher: Opens the tenant's sealed messages.
        tenant_id: The tenant.
        user_id: The user's subject, as their credential states it.

    Raises:
        TenantKeyMissing: The tenant's data key is gone (offboarded).
        ConversationDecryptionError: A stored message fails authentication.
    """
    yield {
        "type": "user",
        "tenant_id": tenant_id,
        "user_id": user_id,
        "exported_at": datetime.now(UTC).isoformat(),
    }
    summaries = await repository.list_conversations(connection, user_id=user_id)
    if summaries:
        sealer = await cipher.sealer(connection, tenant_id=tenant_id)
        turns = await repository.read_turns(connection, sealer=sealer, user_id=user_id)
        by_conversation: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for turn in turns:
            by_conversation.setdefault(turn.conversation_id, []).append(
                turn_record(turn, with_context=True)
            )
        for summary in summaries:
            yield {
                "type": "conversation",
                "id": str(summary.id),
                "created_at": summary.created_at.isoformat(),
                "updated_at": summary.updated_at.isoformat(),
                "messages": by_conversation.get(summary.id, []),
            }
    rows = await connection.fetch(
        "SELECT occurred_at, credential_id, provider, model, input_tokens, output_tokens,"
        " latency_ms, outcome, final, trace_id, cost_usd FROM usage WHERE user_id = $1"
        " ORDER BY occurred_at, id",
        user_id,
    )
    for row in rows:
        yield {"type": "usage", **dict(row), "occurred_at": row["occurred_at"].isoformat()}


class ConversationService:
    """Conversations of the calling user (never another user's, never another tenant's)."""

    def __init__(self, *, pool: asyncpg.Pool, cipher: ConversationCipher) -> None:
        self._pool = pool
        self._cipher = cipher

    async def page(self, *, scope: TenantScope, limit: int, cursor: str | None) -> ConversationPage:
        """The caller's conversations, most recent first.

        Raises:
            ValidationFailed: A malformed cursor.
        """
        before = decode_cursor(cursor) if cursor else None
        async with tenant_transaction(self._pool, scope=scope) as connection:
            found = await repository.list_conversations(
                connection, user_id=scope.subject, limit=limit + 1, before=before
            )
        more = len(found) > limit
        found = found[:limit]
        return ConversationPage(found, encode_cursor(found[-1]) if more else None)

    async def read(
        self, *, scope: TenantScope, conversation_id: uuid.UUID
    ) -> tuple[ConversationSummary, list[Turn]]:
        """One of the caller's conversations with its messages, decrypted.

        Raises:
            NotFound: No such conversation of the caller's (another user's looks the same).
        """
        async with tenant_transaction(self._pool, scope=scope) as connection:
            summary = await repository.find_conversation(
                connection, conversation_id=conversation_id, user_id=scope.subject
            )
            if summary is None:
                raise NotFound("no such conversation")
            turns = await repository.read_turns(
                connection,
                sealer=await self._cipher.sealer(connection, tenant_id=scope.tenant_id),
                conversation_ids=[conversation_id],
                user_id=scope.subject,
            )
        return summary, turns

    async def delete(self, *, scope: TenantScope, conversation_id: uuid.UUID) -> None:
        """Delete one of the caller's conversations and its messages.

        Raises:
            NotFound: No such conversation of the caller's.
        """
        async with tenant_transaction(self._pool, scope=scope) as connection:
            deleted = await repository.delete_conversation(
                connection, conversation_id=conversation_id, user_id=scope.subject
            )
        if not deleted:
            raise NotFound("no such conversation")

    async def delete_user(self, *, scope: TenantScope, user_id: str) -> int:
        """Delete every conversation of a user of the caller's tenant (admin); returns how many."""
        async with tenant_transaction(self._pool, scope=scope) as connection:
            return await repository.delete_user_conversations(connection, user_id=user_id)

    async def export_user(self, *, scope: TenantScope, user_id: str) -> list[dict[str, Any]]:
        """`user_export` for a user of the caller's tenant (admin).

        Raises:
            TenantKeyMissing: The tenant's data key is gone.
        """
        async with tenant_transaction(self._pool, scope=scope) as connection:
            return [
                record
                async for record in user_export(
                    connection, cipher=self._cipher, tenant_id=scope.tenant_id, user_id=user_id
                )
            ]
