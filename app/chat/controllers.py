"""`POST /v1/chat`: a JSON answer, or with `stream: true` server-sent events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.base import ASGIResponse

from app.chat.grounding import citation
from app.chat.schemas import ChatRequest, ChatResponse, Citation, Usage
from app.chat.service import Ask, ChatService, ChatStream
from app.edge.guards import ensure_own_tenant, requires
from app.tenancy.scope import Role, TenantScope


class EventStream(ServerSentEvent):
    """`text/event-stream` even from a handler whose other answers are JSON.

    Litestar gives the route's media type precedence over the response's own.
    """

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        kwargs["media_type"] = "text/event-stream"
        return super().to_asgi_response(*args, **kwargs)


async def _sse(stream: ChatStream) -> AsyncGenerator[ServerSentEventMessage, None]:
    events: AsyncIterator[tuple[str, dict[str, object]]] = stream.events
    async for name, data in events:
        yield ServerSentEventMessage(data=msgspec.json.encode(data).decode(), event=name)


class ChatController(Controller):
    """`/v1/chat`."""

    path = "/v1/chat"

    @post(guards=[requires(Role.CHAT)], status_code=200)
    async def chat(
        self,
        data: JSONBody[ChatRequest],
        request: Request[TenantScope, Any, Any],
        chat: NamedDependency[ChatService],
    ) -> ChatResponse | EventStream:
        """Answer a question over the caller's documents, with citations."""
        # The caller comes from the request, not the `caller` dependency: with two dependencies
        # Litestar resolves them in an anyio TaskGroup per request (litestar#4563), as on
        # `/v1/search`. The value is the same (`provide_scope` returns `request.user`).
        caller = request.user
        ensure_own_tenant(caller, data.tenant_id)
        ask = Ask(
            message=data.message,
            conversation_id=data.conversation_id,
            top_k=data.top_k,
            raw_filter=data.filter,
        )
        if data.stream:
            started = await chat.stream_answer(scope=caller, ask=ask)
            return EventStream(
                _sse(started), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
            )
        answer = await chat.answer(scope=caller, ask=ask)
        return ChatResponse(
            conversation_id=str(answer.conversation_id),
            message_id=str(answer.message_id),
            answer=answer.answer,
            citations=[Citation(**citation(c.marker, c.hit)) for c in answer.citations],
            provider=answer.provider,
            model=answer.model,
            usage=Usage(input_tokens=answer.input_tokens, output_tokens=answer.output_tokens),
            trace_id=answer.trace_id,
        )
