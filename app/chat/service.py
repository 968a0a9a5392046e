"""RAG orchestration: retrieve in scope, answer through the tenant's chain, cite, record."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.audit.usage import record_usage
from app.chat import repository
from app.db.pool import tenant_transaction
from app.llm.provider import CompletionRequest, ContextChunk
from app.llm.router import ProviderChain
from app.problems import NotFound, ValidationFailed
from app.retrieval.index import Hit
from app.retrieval.service import DocumentService
from app.telemetry.spans import current_trace_id, scoped_span
from app.tenancy.registry import TenantRegistry
from app.tenancy.scope import TenantScope

_MARKER = re.compile(r"\[(\d{1,3})\]")
SNIPPET_CHARS = 240


@dataclass(frozen=True, slots=True)
class CitedSource:
    """A context chunk the answer cites."""

    marker: int
    hit: Hit


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """The outcome of one chat turn."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    answer: str
    citations: list[CitedSource]
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    trace_id: str


class ChatService:
    """Answers questions over the caller's documents."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        documents: DocumentService,
        registry: TenantRegistry,
        max_message_chars: int,
    ) -> None:
        self._pool = pool
        self._documents = documents
        self._registry = registry
        self._max_message_chars = max_message_chars
        self._chains: dict[str, tuple[str, ProviderChain]] = {}

    def _chain(self, tenant_id: str) -> ProviderChain:
        tenant = self._registry.tenant(tenant_id)
        if tenant is None:  # pragma: no cover - authentication already required the tenant
            raise NotFound("tenant unknown")
        digest = tenant.manifest.sha256()
        cached = self._chains.get(tenant_id)
        if cached is None or cached[0] != digest:
            cached = (digest, ProviderChain.from_entries(tenant.manifest.llm.chain))
            self._chains[tenant_id] = cached
        return cached[1]

    async def answer(
        self,
        *,
        scope: TenantScope,
        message: str,
        conversation_id: uuid.UUID | None,
        top_k: int | None,
        raw_filter: dict[str, Any] | None,
    ) -> ChatAnswer:
        """Retrieve, answer with citations, and record the turn.

        Raises:
            ValidationFailed: Message too long, or invalid top_k/filter.
            NotFound: `conversation_id` is not one of the caller's conversations.
            ProvidersUnavailable: Every provider in the tenant's chain failed.
        """
        if len(message) > self._max_message_chars:
            raise ValidationFailed(f"message: at most {self._max_message_chars} characters")
        started = time.perf_counter()
        with scoped_span("chat", scope=scope) as span:
            if conversation_id is not None:
                async with tenant_transaction(self._pool, scope=scope) as connection:
                    if not await repository.conversation_exists(
                        connection, conversation_id=conversation_id, user_id=scope.subject
                    ):
                        raise NotFound("no such conversation")
            hits = await self._documents.search(
                scope=scope, query=message, top_k=top_k, raw_filter=raw_filter
            )
            context = tuple(
                ContextChunk(
                    marker=i,
                    document_id=h.document_id,
                    chunk_id=h.chunk_id,
                    title=h.title,
                    text=h.text,
                    score=h.score,
                )
                for i, h in enumerate(hits, start=1)
            )
            tenant = self._registry.tenant(scope.tenant_id)
            store = tenant is not None and tenant.manifest.privacy.store_conversations
            completion = await self._chain(scope.tenant_id).complete(
                scope=scope, request=CompletionRequest(question=message, context=context, model="")
            )
            citations = _cited(completion.text, hits)
            conversation = conversation_id or uuid.uuid4()
            message_id = uuid.uuid4()
            trace_id = current_trace_id()
            span.set_attribute("bulkhead.citations", len(citations))
            async with tenant_transaction(self._pool, scope=scope) as connection:
                if store:
                    await repository.save_exchange(
                        connection,
                        tenant_id=scope.tenant_id,
                        conversation_id=conversation,
                        user_id=scope.subject,
                        question=message,
                        answer_id=message_id,
                        answer=completion.text,
                        citations=[
                            {
                                "marker": c.marker,
                                "document_id": c.hit.document_id,
                                "chunk_id": c.hit.chunk_id,
                            }
                            for c in citations
                        ],
                        provider=completion.provider,
                        model=completion.model,
                    )
                await record_usage(
                    connection,
                    tenant_id=scope.tenant_id,
                    user_id=scope.subject,
                    credential_id=scope.credential_id,
                    provider=completion.provider,
                    model=completion.model,
                    input_tokens=completion.input_tokens,
                    output_tokens=completion.output_tokens,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    outcome="ok",
                    trace_id=trace_id,
                )
        return ChatAnswer(
            conversation_id=conversation,
            message_id=message_id,
            answer=completion.text,
            citations=citations,
            provider=completion.provider,
            model=completion.model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            trace_id=trace_id,
        )


def _cited(answer: str, hits: list[Hit]) -> list[CitedSource]:
    """The hits whose markers the answer uses, in order of first citation."""
    cited: list[CitedSource] = []
    seen: set[int] = set()
    for match in _MARKER.finditer(answer):
        marker = int(match.group(1))
        if 1 <= marker <= len(hits) and marker not in seen:
            seen.add(marker)
            cited.append(CitedSource(marker, hits[marker - 1]))
    return cited
