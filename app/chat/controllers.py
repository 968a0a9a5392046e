"""`POST /v1/chat` (non-streaming)."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.chat.schemas import ChatRequest, ChatResponse, Citation, Usage
from app.chat.service import SNIPPET_CHARS, ChatService
from app.identity.guards import ensure_own_tenant, requires
from app.problems import ValidationFailed
from app.tenancy.scope import Role, TenantScope


class ChatController(Controller):
    """`/v1/chat`."""

    path = "/v1/chat"

    @post(guards=[requires(Role.CHAT)], status_code=200)
    async def chat(
        self,
        data: JSONBody[ChatRequest],
        caller: NamedDependency[TenantScope],
        chat: NamedDependency[ChatService],
    ) -> ChatResponse:
        """Answer a question over the caller's documents, with citations."""
        ensure_own_tenant(caller, data.tenant_id)
        if data.stream:
            raise ValidationFailed(
                "stream: streaming responses are not available yet; send stream=false",
                errors=[{"key": "stream", "message": "unsupported"}],
            )
        answer = await chat.answer(
            scope=caller,
            message=data.message,
            conversation_id=data.conversation_id,
            top_k=data.top_k,
            raw_filter=data.filter,
        )
        return ChatResponse(
            conversation_id=str(answer.conversation_id),
            message_id=str(answer.message_id),
            answer=answer.answer,
            citations=[
                Citation(
                    marker=c.marker,
                    document_id=c.hit.document_id,
                    chunk_id=c.hit.chunk_id,
                    title=c.hit.title,
                    score=c.hit.score,
                    snippet=c.hit.text[:SNIPPET_CHARS],
                )
                for c in answer.citations
            ],
            provider=answer.provider,
            model=answer.model,
            usage=Usage(input_tokens=answer.input_tokens, output_tokens=answer.output_tokens),
            trace_id=answer.trace_id,
        )
