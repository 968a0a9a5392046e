"""RAG orchestration: retrieve in scope, answer through the tenant's chain, cite, record.

Every prompt that leaves for a provider is assembled in `ChatService._ground` and passes
through `ChatService._outgoing`, the one place to transform (redact) it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import asyncpg
from opentelemetry import trace

from app.chat import repository
from app.chat.conversations import ConversationService
from app.chat.crypto import ConversationCipher
from app.chat.grounding import (
    CitedSource,
    citation,
    cited,
    context_chunks,
    fit_history,
    history_budget,
    stored_context,
)
from app.config import ChatSettings, LlmSettings
from app.db.errors import database_unavailable
from app.db.pool import tenant_transaction
from app.db.registry import TenantRegistry
from app.llm.chains import estimate_cost
from app.llm.keys import SecretResolver, scrub
from app.llm.provider import (
    Completion,
    CompletionRequest,
    ContextChunk,
    HistoryTurn,
    ProviderError,
)
from app.llm.router import ProviderChain, ProviderRejected, ProvidersUnavailable
from app.llm.run import AttemptRecord
from app.llm.tenant_chains import AUTO_MODEL, TenantChains
from app.privacy.redact import RedactionMemo, parse_kinds, redact_fields
from app.problems import NotFound, ValidationFailed
from app.retrieval.service import DocumentService
from app.telemetry.spans import current_trace_id, scoped_span, start_span
from app.tenancy.scope import TenantScope
from app.vectors.index import Hit

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ask:
    """One question to answer.

    Attributes:
        history: The caller's own earlier turns (OpenAI-compatible endpoint); None means the
            stored turns of `conversation_id`, if any.
        instructions: The caller's system instructions, sent after Bulkhead's system prompt.
        model: `auto` (the tenant's chain) or a chain entry, `model` or `provider/model`.
        store: Keep the exchange as a conversation (if the tenant's manifest allows it).
    """

    message: str
    conversation_id: uuid.UUID | None = None
    top_k: int | None = None
    raw_filter: dict[str, Any] | None = None
    history: tuple[HistoryTurn, ...] | None = None
    instructions: str = ""
    model: str = AUTO_MODEL
    store: bool = True


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
    finish_reason: str = "stop"
    history_dropped: int = 0


@dataclass(frozen=True, slots=True)
class _Grounded:
    hits: list[Hit]
    request: CompletionRequest
    chain: ProviderChain
    history_dropped: int


class ChatService:
    """Answers questions over the caller's documents."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        documents: DocumentService,
        registry: TenantRegistry,
        cipher: ConversationCipher,
        max_message_chars: int,
        resolver: SecretResolver | None = None,
        llm: LlmSettings | None = None,
        chat: ChatSettings | None = None,
    ) -> None:
        self._pool = pool
        self._documents = documents
        self._registry = registry
        self._cipher = cipher
        self._max_message_chars = max_message_chars
        self._llm = llm or LlmSettings()
        self._settings = chat or ChatSettings()
        self.chains = TenantChains(registry, resolver=resolver, llm=self._llm)
        self.conversations = ConversationService(pool=pool, cipher=cipher)
        # Retrieved passages recur across questions; their redaction is remembered per tenant.
        self._redactions = RedactionMemo((ContextChunk,))

    async def aclose(self) -> None:
        """Close every chain's provider connections."""
        await self.chains.aclose()

    def _outgoing(self, scope: TenantScope, request: CompletionRequest) -> CompletionRequest:
        """The request as it leaves for a provider: question, history and passages.

        The seam for transformations that must see everything sent: the tenant's
        `privacy.redact` kinds are redacted here (counts on the `chat` span).
        """
        tenant = self._registry.tenant(scope.tenant_id)
        kinds = parse_kinds(tenant.manifest.privacy.redact) if tenant else frozenset()
        return redact_fields(request, kinds, memo=self._redactions, partition=scope.tenant_id)

    async def _ground(self, scope: TenantScope, ask: Ask) -> _Grounded:
        if len(ask.message) > self._max_message_chars:
            raise ValidationFailed(f"message: at most {self._max_message_chars} characters")
        chain = self.chains.for_model(scope.tenant_id, ask.model)
        history = ask.history or ()
        if ask.conversation_id is not None:
            history = await self._stored_history(scope, ask.conversation_id)
        hits = await self._documents.search(
            scope=scope, query=ask.message, top_k=ask.top_k, raw_filter=ask.raw_filter
        )
        kept, dropped = fit_history(history, history_budget(chain.entries, self._settings))
        request = CompletionRequest(
            question=ask.message,
            context=context_chunks(hits),
            model="",
            history=kept,
            instructions=ask.instructions,
        )
        return _Grounded(hits, self._outgoing(scope, request), chain, dropped)

    async def _stored_history(
        self, scope: TenantScope, conversation_id: uuid.UUID
    ) -> tuple[HistoryTurn, ...]:
        async with tenant_transaction(self._pool, scope=scope) as connection:
            if not await repository.conversation_exists(
                connection, conversation_id=conversation_id, user_id=scope.subject
            ):
                raise NotFound("no such conversation")
            if self._settings.history_max_messages == 0:
                return ()
            turns = await repository.read_turns(
                connection,
                sealer=await self._cipher.sealer(connection, tenant_id=scope.tenant_id),
                conversation_ids=[conversation_id],
                last=self._settings.history_max_messages,
            )
        return tuple(
            HistoryTurn("assistant" if t.role == "assistant" else "user", t.text) for t in turns
        )

    async def answer(self, *, scope: TenantScope, ask: Ask) -> ChatAnswer:
        """Retrieve, answer with citations, and record the turn.

        Raises:
            ValidationFailed: Message too long, or invalid top_k/filter.
            NotFound: `conversation_id` is not one of the caller's conversations.
            ModelNotFound: `ask.model` is not in the tenant's chain.
            ProvidersUnavailable: Every provider in the tenant's chain failed.
            ProviderRejected: A provider refused the request itself.
        """
        started = time.perf_counter()
        with scoped_span("chat", scope=scope) as span:
            grounded = await self._ground(scope, ask)
            ledger: list[AttemptRecord] = []
            try:
                completion = await grounded.chain.complete(
                    scope=scope, request=grounded.request, attempts=ledger
                )
            except (ProvidersUnavailable, ProviderRejected) as exc:
                await self._record_failure(scope, ledger, exc.code, started)
                raise
            citations = cited(completion.text, grounded.hits)
            conversation = ask.conversation_id or uuid.uuid4()
            message_id = uuid.uuid4()
            trace_id = current_trace_id()
            span.set_attribute("bulkhead.citations", len(citations))
            await self._save_turn(
                scope,
                ask,
                conversation_id=conversation,
                answer_id=message_id,
                completion=completion,
                ledger=ledger,
                hits=grounded.hits,
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
            finish_reason=completion.finish_reason,
            history_dropped=grounded.history_dropped,
        )

    async def _save_turn(
        self,
        scope: TenantScope,
        ask: Ask,
        *,
        conversation_id: uuid.UUID,
        answer_id: uuid.UUID,
        completion: Completion,
        ledger: list[AttemptRecord],
        hits: list[Hit],
        citations: list[CitedSource],
        started: float,
        trace_id: str,
    ) -> None:
        """Append the turn (unless the tenant or the endpoint opts out) and its usage.

        One statement (`repository.save_turn`), sealed with the tenant's data key as last
        read; if that key has changed since, it is read again and the turn sealed again.
        """
        tenant = self._registry.tenant(scope.tenant_id)
        store = ask.store and tenant is not None and tenant.manifest.privacy.store_conversations
        usage = self._usage(ledger, completion, started, trace_id)
        if not store:
            await repository.save_turn(self._pool, scope=scope, usage=usage)
            return
        exchange = repository.Exchange(
            conversation_id=conversation_id,
            question=ask.message,
            answer_id=answer_id,
            answer=completion.text,
            citations=[
                {"marker": c.marker, "document_id": c.hit.document_id, "chunk_id": c.hit.chunk_id}
                for c in citations
            ],
            context=stored_context(hits),
        )
        sealer = self._cipher.last_sealer(scope.tenant_id)
        if sealer is not None:
            try:
                await repository.save_turn(
                    self._pool,
                    scope=scope,
                    usage=usage,
                    exchange=exchange,
                    sealer=sealer,
                )
                return
            except repository.DataKeyChanged:
                self._cipher.forget(scope.tenant_id)
        async with tenant_transaction(self._pool, scope=scope) as connection:
            sealer = await self._cipher.sealer(connection, tenant_id=scope.tenant_id)
            await repository.save_turn(
                connection, scope=scope, usage=usage, exchange=exchange, sealer=sealer
            )

    def _usage(
        self, ledger: list[AttemptRecord], completion: Completion, started: float, trace: str
    ) -> repository.TurnUsage:
        """The ledger rows of an answered turn: every attempt, the answering one final."""
        attempts = list(ledger)
        answered = [i for i, a in enumerate(attempts) if a.outcome == "ok"]
        if not answered:  # a chain that kept no ledger: the answer is the only row
            elapsed = (time.perf_counter() - started) * 1000
            attempts.append(AttemptRecord(completion.provider, completion.model, "ok", elapsed))
            answered = [len(attempts) - 1]
        final = answered[-1]
        entry = attempts[final]
        # Priced by the chain entry's model as the manifest (and the price table) names it;
        # the model the provider reports (often a dated snapshot) if only that is priced.
        priced = f"{entry.provider}/{entry.model}" in self._llm.prices
        return repository.TurnUsage(
            attempts=tuple(attempts),
            final=final,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            trace_id=trace,
            cost_usd=estimate_cost(
                self._llm.prices,
                provider=entry.provider,
                model=entry.model if priced else completion.model,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
            ),
        )

    async def _record_failure(
        self,
        scope: TenantScope,
        ledger: list[AttemptRecord],
        outcome: str,
        started: float,
        trace_id: str | None = None,
    ) -> None:
        """Record a request that got no (complete) answer: every attempt, the last one final.

        The final row is the last attempt that ended on its own (not `cancelled` because
        something else ended the request). A request that made no attempt at all is one row
        under provider `none` with `outcome`.
        """
        attempts = tuple(ledger)
        if not attempts:
            elapsed = (time.perf_counter() - started) * 1000
            attempts = (AttemptRecord("none", "none", outcome, elapsed),)
        ended = [i for i, a in enumerate(attempts) if a.outcome != "cancelled"]
        usage = repository.TurnUsage(
            attempts=attempts,
            final=ended[-1] if ended else len(attempts) - 1,
            input_tokens=0,
            output_tokens=0,
            trace_id=trace_id or current_trace_id(),
            cost_usd=0.0,
        )
        await repository.save_turn(self._pool, scope=scope, usage=usage)

    async def stream_answer(self, *, scope: TenantScope, ask: Ask) -> ChatStream:
        """Retrieve and start streaming an answer; returns once a provider has started.

        Waiting for the first content before answering means a chain that fails entirely is
        still a plain 503 with Retry-After, not a 200 stream that breaks at once.

        Raises:
            ValidationFailed: Message too long, or invalid top_k/filter.
            NotFound: `conversation_id` is not one of the caller's conversations.
            ModelNotFound: `ask.model` is not in the tenant's chain.
            ProvidersUnavailable: Every provider in the tenant's chain failed before content.
            ProviderRejected: A provider refused the request itself.
        """
        started = time.perf_counter()
        span = start_span(
            "chat", attributes=lambda: {**scope.span_attributes(), "gen_ai.request.stream": True}
        )
        trace_id = format(span.get_span_context().trace_id, "032x")
        ledger: list[AttemptRecord] = []
        try:
            with trace.use_span(span, end_on_exit=False):
                grounded = await self._ground(scope, ask)
                upstream = grounded.chain.stream(
                    scope=scope, request=grounded.request, attempts=ledger
                )
                first = await anext(upstream)
        except (ProvidersUnavailable, ProviderRejected) as exc:
            span.end()
            await self._record_failure(scope, ledger, exc.code, started, trace_id)
            raise
        except BaseException:
            span.end()
            raise
        conversation = ask.conversation_id or uuid.uuid4()
        message_id = uuid.uuid4()
        hits = grounded.hits

        async def events() -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
            try:
                yield (
                    "meta",
                    {
                        "conversation_id": str(conversation),
                        "message_id": str(message_id),
                        "trace_id": trace_id,
                        "history_dropped": grounded.history_dropped,
                    },
                )
                # Every passage the model was given, so markers can be linked as they stream in;
                # `citations` (below) is, as on every surface, the ones the answer cites.
                yield ("passages", {"passages": [citation(i, h) for i, h in enumerate(hits, 1)]})
                event = first
                while not isinstance(event, Completion):
                    yield ("delta", {"text": event})
                    event = await anext(upstream)
                sources = cited(event.text, hits)
                await self._save_turn(
                    scope,
                    ask,
                    conversation_id=conversation,
                    answer_id=message_id,
                    completion=event,
                    ledger=ledger,
                    hits=hits,
                    citations=sources,
                    started=started,
                    trace_id=trace_id,
                )
                yield ("citations", {"citations": [citation(c.marker, c.hit) for c in sources]})
                yield (
                    "done",
                    {
                        "provider": event.provider,
                        "model": event.model,
                        "finish_reason": event.finish_reason,
                        "usage": {
                            "input_tokens": event.input_tokens,
                            "output_tokens": event.output_tokens,
                        },
                        "cited": [c.marker for c in sources],
                    },
                )
            except ProviderError as exc:
                span.set_attribute("error.type", exc.reason)
                await self._record_failure(scope, ledger, "stream_interrupted", started, trace_id)
                yield ("error", {"code": "provider_stream_interrupted", "message": scrub(str(exc))})
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__name__)
                if database_unavailable(exc):
                    # The turn could not be saved: say so in the stream's own terms.
                    _log.warning("streamed chat: database unavailable: %s", type(exc).__name__)
                    yield ("error", {"code": "database_unavailable", "message": "retry later"})
                else:
                    _log.error("streamed chat failed", exc_info=exc)
                    yield ("error", {"code": "internal_error", "message": "the answer failed"})
            finally:
                await upstream.aclose()
                span.end()

        return ChatStream(conversation, message_id, trace_id, events())


@dataclass(slots=True)
class ChatStream:
    """A streamed answer that has started: content is flowing from a provider.

    Attributes:
        events: `(event, data)` pairs for SSE: meta, passages, delta..., then citations and
            done, or error.
    """

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    trace_id: str
    events: AsyncGenerator[tuple[str, dict[str, Any]], None]
