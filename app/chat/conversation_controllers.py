"""`/v1/conversations` (the caller's own) and `/v1/admin/users/{user_id}` (GDPR, admin)."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, Parameter

from app.chat.conversations import turn_record
from app.chat.schemas import (
    ConversationDetail,
    ConversationItem,
    ConversationList,
    StoredMessage,
    UserDataDeleted,
)
from app.chat.service import ChatService
from app.edge.guards import requires
from app.problems import ValidationFailed
from app.tenancy.scope import Role, TenantScope

NDJSON = "application/x-ndjson"
_MAX_USER_ID = 256


class ConversationController(Controller):
    """`/v1/conversations`: only the calling user's conversations exist here."""

    path = "/v1/conversations"
    guards = [requires(Role.CHAT)]

    @get()
    async def list_conversations(
        self,
        caller: NamedDependency[TenantScope],
        chat: NamedDependency[ChatService],
        limit: FromQuery[Annotated[int, Parameter(ge=1, le=100)]] = 20,
        cursor: FromQuery[Annotated[str | None, Parameter(max_length=200)]] = None,
    ) -> ConversationList:
        """The caller's conversations, most recently updated first."""
        page = await chat.conversations.page(scope=caller, limit=limit, cursor=cursor)
        return ConversationList(
            conversations=[
                ConversationItem(
                    id=str(c.id),
                    created_at=c.created_at.isoformat(),
                    updated_at=c.updated_at.isoformat(),
                    messages=c.messages,
                )
                for c in page.conversations
            ],
            next_cursor=page.next_cursor,
        )

    @get("/{conversation_id:uuid}")
    async def read_conversation(
        self,
        conversation_id: FromPath[uuid.UUID],
        caller: NamedDependency[TenantScope],
        chat: NamedDependency[ChatService],
    ) -> ConversationDetail:
        """One of the caller's conversations with its messages."""
        summary, turns = await chat.conversations.read(
            scope=caller, conversation_id=conversation_id
        )
        return ConversationDetail(
            id=str(summary.id),
            created_at=summary.created_at.isoformat(),
            updated_at=summary.updated_at.isoformat(),
            messages=[
                msgspec.convert(turn_record(t, with_context=False), StoredMessage) for t in turns
            ],
        )

    @delete("/{conversation_id:uuid}", status_code=204)
    async def delete_conversation(
        self,
        conversation_id: FromPath[uuid.UUID],
        caller: NamedDependency[TenantScope],
        chat: NamedDependency[ChatService],
    ) -> None:
        """Delete one of the caller's conversations and its messages."""
        await chat.conversations.delete(scope=caller, conversation_id=conversation_id)


def _user_id(user_id: str) -> str:
    if not user_id or len(user_id) > _MAX_USER_ID:
        raise ValidationFailed(f"user_id: 1 to {_MAX_USER_ID} characters")
    return user_id


class UserDataController(Controller):
    """`/v1/admin/users/{user_id}`: a user's stored data in the admin's tenant (GDPR)."""

    path = "/v1/admin/users/{user_id:str}"
    guards = [requires(Role.ADMIN)]

    @delete("/data", status_code=200)
    async def delete_user_data(
        self,
        user_id: FromPath[str],
        caller: NamedDependency[TenantScope],
        chat: NamedDependency[ChatService],
    ) -> UserDataDeleted:
        """Delete every conversation (messages, context) of a user of the caller's tenant."""
        deleted = await chat.conversations.delete_user(scope=caller, user_id=_user_id(user_id))
        return UserDataDeleted(user_id=user_id, conversations_deleted=deleted)

    @get("/export", media_type=NDJSON)
    async def export_user_data(
        self,
        user_id: FromPath[str],
        caller: NamedDependency[TenantScope],
        chat: NamedDependency[ChatService],
    ) -> Response[bytes]:
        """A user's conversations (decrypted) and usage rows, as NDJSON."""
        records = await chat.conversations.export_user(scope=caller, user_id=_user_id(user_id))
        body = b"".join(msgspec.json.encode(r) + b"\n" for r in records)
        return Response(body, media_type=NDJSON, headers={"Cache-Control": "no-store"})
