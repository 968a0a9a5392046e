"""RAG orchestration: retrieve in scope, answer through the tenant's chain, cite, record."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import asyncpg
from opentelemetry import trace

from app.audit.usage import record_usage
from app.chat import repository
from app.config import LlmSettings
from app.db.pool import Connection, tenant_transaction
from app.llm.breaker import BreakerRegistry
from app.llm.chains import build_chain, chain_policy, estimate_cost
from app.llm.keys import SecretResolver, scrub
from app.llm.provider import Completion, CompletionRequest, ContextChunk, ProviderError
from app.llm.router import ProviderChain, ProviderRejected, ProvidersUnavailable
from app.privacy.redact import parse_kinds
from app.problems import NotFound, ValidationFailed
from app.retrieval.index import Hit
from app.retrieval.service import DocumentService
from app.telemetry.spans import current_trace_id, scoped_span
from app.tenancy.registry import TenantRegistry
from app.tenancy.scope import TenantScope

_MARKER = re.compile(r"\[(\d{1,3})\]")
_tracer = trace.get_tracer("bulkhead")
_log = logging.getLogger(__name__)
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
        resolver: SecretResolver | None = None,
        llm: LlmSettings | None = None,
    ) -> None:
        self._pool = pool
        self._documents = documents
        self._registry = registry
        self._max_message_chars = max_message_chars
        self._resolver = resolver
        self._llm = llm or LlmSettings()
        self.breakers = BreakerRegistry(chain_policy(self._llm).breaker)
        self._chains: dict[str, tuple[str, ProviderChain]] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def _chain(self, tenant_id: str) -> ProviderChain:
        tenant = self._registry.tenant(tenant_id)
        if tenant is None:  # pragma: no cover - authentication already required the tenant
            raise NotFound("tenant unknown")
        digest = tenant.manifest.sha256()
        cached = self._chains.get(tenant_id)
        if cached is None or cached[0] != digest:
            entries = tenant.manifest.llm.chain
            redact = parse_kinds(tenant.manifest.privacy.redact)
            chain = (
                ProviderChain.from_entries(entries, redact=redact)
                if self._resolver is None
                else build_chain(
                    entries,
                    resolver=self._resolver,
                    settings=self._llm,
                    breakers=self.breakers,
                    capture_content=tenant.manifest.privacy.trace_content,
                    redact=redact,
                )
            )
            if cached is not None:
                self._retire(cached[1])
            cached = (digest, chain)
            self._chains[tenant_id] = cached
        return cached[1]

    def _retire(self, chain: ProviderChain) -> None:
        # Requests already running on the old chain keep it until their deadline.
        async def close_later() -> None:
            await asyncio.sleep(chain.policy.request_deadline)
            await chain.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """Close every chain's provider connections."""
        for task in list(self._retiring):
            task.cancel()
        for _, chain in self._chains.values():
            await chain.aclose()
        self._chains.clear()

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
            hits, context = await self._context(
                scope=scope,
                message=message,
                conversation_id=conversation_id,
                top_k=top_k,
                raw_filter=raw_filter,
            )
            try:
                completion = await self._chain(scope.tenant_id).complete(
                    scope=scope,
                    request=CompletionRequest(question=message, context=context, model=""),
                )
            except (ProvidersUnavailable, ProviderRejected) as exc:
                await self._record_failure(scope, exc.code, started)
                raise
            citations = _cited(completion.text, hits)
            conversation = conversation_id or uuid.uuid4()
            message_id = uuid.uuid4()
            trace_id = current_trace_id()
            span.set_attribute("bulkhead.citations", len(citations))
            await self._save_turn(
                scope,
                conversation_id=conversation,
                question=message,
                answer_id=message_id,
                completion=completion,
                citations=citations,
                started=started,
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

    async def _save_turn(
        self,
        scope: TenantScope,
        *,
        conversation_id: uuid.UUID,
        question: str,
        answer_id: uuid.UUID,
        completion: Completion,
        citations: list[CitedSource],
        started: float,
        trace_id: str,
    ) -> None:
        """Append the turn (unless the tenant opted out) and its usage in one transaction."""
        tenant = self._registry.tenant(scope.tenant_id)
        store = tenant is not None and tenant.manifest.privacy.store_conversations
        async with tenant_transaction(self._pool, scope=scope) as connection:
            if store:
                await repository.save_exchange(
                    connection,
                    tenant_id=scope.tenant_id,
                    conversation_id=conversation_id,
                    user_id=scope.subject,
                    question=question,
                    answer_id=answer_id,
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
            await self._record(connection, scope, completion, started, "ok", trace_id)

    async def _record(
        self,
        connection: Connection,
        scope: TenantScope,
        completion: Completion,
        started: float,
        outcome: str,
        trace_id: str,
    ) -> None:
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
            outcome=outcome,
            trace_id=trace_id,
            cost_usd=estimate_cost(
                self._llm.prices,
                provider=completion.provider,
                model=completion.model,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
            ),
        )

    async def _record_failure(
        self, scope: TenantScope, outcome: str, started: float, trace_id: str | None = None
    ) -> None:
        nothing = Completion("", "none", "none", 0, 0, "error", "")
        async with tenant_transaction(self._pool, scope=scope) as connection:
            await self._record(
                connection, scope, nothing, started, outcome, trace_id or current_trace_id()
            )

    async def _context(
        self,
        *,
        scope: TenantScope,
        message: str,
        conversation_id: uuid.UUID | None,
        top_k: int | None,
        raw_filter: dict[str, Any] | None,
    ) -> tuple[list[Hit], tuple[ContextChunk, ...]]:
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
        return hits, context

    async def stream_answer(
        self,
        *,
        scope: TenantScope,
        message: str,
        conversation_id: uuid.UUID | None,
        top_k: int | None,
        raw_filter: dict[str, Any] | None,
    ) -> ChatStream:
        """Retrieve and start streaming an answer; returns once a provider has started.

        Waiting for the first content before answering means a chain that fails entirely is
        still a plain 503 with Retry-After, not a 200 stream that breaks at once.

        Raises:
            ValidationFailed: Message too long, or invalid top_k/filter.
            NotFound: `conversation_id` is not one of the caller's conversations.
            ProvidersUnavailable: Every provider in the tenant's chain failed before content.
            ProviderRejected: A provider refused the request itself.
        """
        if len(message) > self._max_message_chars:
            raise ValidationFailed(f"message: at most {self._max_message_chars} characters")
        started = time.perf_counter()
        span = _tracer.start_span(
            "chat", attributes={**scope.span_attributes(), "gen_ai.request.stream": True}
        )
        trace_id = format(span.get_span_context().trace_id, "032x")
        try:
            with trace.use_span(span, end_on_exit=False):
                hits, context = await self._context(
                    scope=scope,
                    message=message,
                    conversation_id=conversation_id,
                    top_k=top_k,
                    raw_filter=raw_filter,
                )
                upstream = self._chain(scope.tenant_id).stream(
                    scope=scope,
                    request=CompletionRequest(question=message, context=context, model=""),
                )
                first = await anext(upstream)
        except (ProvidersUnavailable, ProviderRejected) as exc:
            span.end()
            await self._record_failure(scope, exc.code, started, trace_id)
            raise
        except BaseException:
            span.end()
            raise
        conversation = conversation_id or uuid.uuid4()
        message_id = uuid.uuid4()

        async def events() -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
            try:
                yield (
                    "meta",
                    {
                        "conversation_id": str(conversation),
                        "message_id": str(message_id),
                        "trace_id": trace_id,
                    },
                )
                yield ("citations", {"citations": [_citation(i, h) for i, h in enumerate(hits, 1)]})
                event = first
                while not isinstance(event, Completion):
                    yield ("delta", {"text": event})
                    event = await anext(upstream)
                cited = _cited(event.text, hits)
                await self._save_turn(
                    scope,
                    conversation_id=conversation,
                    question=message,
                    answer_id=message_id,
                    completion=event,
                    citations=cited,
                    started=started,
                    trace_id=trace_id,
                )
                yield (
                    "done",
                    {
                        "provider": event.provider,
                        "model": event.model,
                        "usage": {
                            "input_tokens": event.input_tokens,
                            "output_tokens": event.output_tokens,
                        },
                        "cited": [c.marker for c in cited],
                    },
                )
            except ProviderError as exc:
                span.set_attribute("error.type", exc.reason)
                await self._record_failure(scope, "stream_interrupted", started, trace_id)
                yield ("error", {"code": "provider_stream_interrupted", "message": scrub(str(exc))})
            except Exception as exc:
                _log.error("streamed chat failed", exc_info=exc)
                span.set_attribute("error.type", type(exc).__name__)
                yield ("error", {"code": "internal_error", "message": "the answer failed"})
            finally:
                await upstream.aclose()
                span.end()

        return ChatStream(conversation, message_id, trace_id, events())


@dataclass(slots=True)
class ChatStream:
    """A streamed answer that has started: content is flowing from a provider.

    Attributes:
        events: `(event, data)` pairs for SSE: meta, citations, delta..., then done or error.
    """

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    trace_id: str
    events: AsyncGenerator[tuple[str, dict[str, Any]], None]


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


def _citation(marker: int, hit: Hit) -> dict[str, Any]:
    return {
        "marker": marker,
        "document_id": hit.document_id,
        "chunk_id": hit.chunk_id,
        "title": hit.title,
        "score": hit.score,
        "snippet": hit.text[:SNIPPET_CHARS],
    }
