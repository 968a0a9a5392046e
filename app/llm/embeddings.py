"""OpenAI embeddings with the tenant's own key: batched, retried, circuit-broken, traced.

The same rules as the chat router (`app/llm/router.py`), for one model instead of a chain:
full-jitter retries on 429/5xx/timeouts/broken connections honouring Retry-After up to the
cap; 401/403 invalidates the tenant's key and refetches it once (a rotation); a circuit
breaker per (tenant, provider, model, endpoint). There is no failover target, so when the
attempts are spent the caller gets `ProvidersUnavailable` (503 with Retry-After) and writes
nothing. Every attempt is an `embeddings {model}` span (OTel GenAI conventions) carrying the
request's attribution.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx2
import openai
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from app.llm.breaker import BreakerRegistry, CircuitBreaker
from app.llm.clients import SdkClients
from app.llm.errors import classify
from app.llm.policy import BREAKER_FAILURES, ChainPolicy, retry_delay
from app.llm.provider import ProviderError
from app.llm.remote import EntryKey, endpoint_of
from app.llm.run import OPERATION_DURATION, TOKEN_USAGE, ProviderRejected, ProvidersUnavailable
from app.telemetry.spans import start_span
from app.tenancy.manifest import ChainEntry

if TYPE_CHECKING:
    from app.llm.keys import SecretResolver
    from app.secrets.values import SecretValue
    from app.tenancy.scope import TenantScope

OPERATION = "embeddings"


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Vectors in input order, and the tokens the provider counted."""

    vectors: list[list[float]]
    input_tokens: int


class OpenAIEmbedder:
    """One tenant's OpenAI (or OpenAI-compatible, at `base_url`) embeddings model."""

    provider = "openai"

    def __init__(
        self,
        *,
        model: str,
        size: int,
        dimensions: int | None,
        secret: str,
        base_url: str | None,
        resolver: SecretResolver,
        policy: ChainPolicy,
        breakers: BreakerRegistry,
        batch_size: int,
        clients: SdkClients,
    ) -> None:
        entry = ChainEntry(provider="openai", model=model, secret=secret, base_url=base_url)
        self._keys = EntryKey(entry, resolver)
        self._clients = clients
        self.model = model
        self.size = size
        self.dimensions = dimensions
        self._policy = policy
        self._breakers = breakers
        self._batch_size = batch_size
        self.endpoint = endpoint_of(base_url, "api.openai.com")

    async def embed(self, texts: list[str], *, scope: TenantScope) -> Embeddings:
        """Embed `texts` in batches of the configured size, all or nothing.

        Raises:
            ProvidersUnavailable: A batch still failed after retries (or the circuit is open).
            ProviderRejected: The provider refused the input itself (a 400).
        """
        vectors: list[list[float]] = []
        tokens = 0
        deadline = time.monotonic() + self._policy.request_deadline
        for start in range(0, len(texts), self._batch_size):
            batch = await self._batch(texts[start : start + self._batch_size], scope, deadline)
            vectors.extend(batch.vectors)
            tokens += batch.input_tokens
        return Embeddings(vectors, tokens)

    async def _batch(self, texts: list[str], scope: TenantScope, deadline: float) -> Embeddings:
        breaker = self._breakers.get(
            scope.tenant_id, self.provider, self.model, self._keys.entry.base_url
        )
        attempt = retries = 0
        refetched = False
        while True:
            if not breaker.allow():
                raise self._unavailable("circuit_open", "the circuit is open", breaker.retry_in())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                breaker.release()
                raise self._unavailable("deadline_exceeded", "no time left", None)
            attempt += 1
            span, started = self._start_span(scope, attempt), time.perf_counter()
            try:
                result = await self._call(
                    texts, scope, min(self._policy.attempt_timeout, remaining)
                )
            except ProviderError as error:
                self._failed(span, error, started)
                step = await self._after_failure(
                    error, breaker, scope, retries, refetched, deadline
                )
                refetched = refetched or step == "refetch"
                retries += step == "retry"
                continue
            except BaseException:
                span.set_attribute("error.type", "cancelled")
                span.end()
                breaker.release()
                raise
            breaker.success()
            self._succeeded(span, result, started)
            return result

    async def _call(self, texts: list[str], scope: TenantScope, budget: float) -> Embeddings:
        key = await self._keys.key(scope=scope)
        try:
            async with asyncio.timeout(budget):
                response = await self._client(key, scope).embeddings.create(
                    model=self.model,
                    input=texts,
                    dimensions=self.dimensions if self.dimensions else openai.omit,
                    timeout=httpx2.Timeout(budget, connect=self._policy.connect_timeout),
                )
        except TimeoutError:
            raise ProviderError("the provider did not answer in time", reason="timeout") from None
        except Exception as exc:
            raise classify(exc, key=key.reveal()) from None
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts):
            raise ProviderError(
                f"the provider returned {len(data)} vectors for {len(texts)} inputs",
                reason="malformed_response",
            )
        vectors = [list(item.embedding) for item in data]
        if any(len(v) != self.size for v in vectors):
            raise ProviderError(
                "the provider returned vectors of another dimension", reason="malformed_response"
            )
        return Embeddings(vectors, response.usage.prompt_tokens if response.usage else 0)

    async def _after_failure(
        self,
        error: ProviderError,
        breaker: CircuitBreaker,
        scope: TenantScope,
        retries: int,
        refetched: bool,
        deadline: float,
    ) -> str:
        """`retry` or `refetch` (after waiting as needed); raises when the batch is lost.

        Raises:
            ProviderRejected: The provider refused the input (400).
            ProvidersUnavailable: No retry is allowed or left.
        """
        if error.reason in BREAKER_FAILURES:
            breaker.failure()
        else:
            breaker.release()
        if error.reason in {"bad_request", "context_length"}:
            raise ProviderRejected(f"{self.provider} refused the embeddings request: {error}")
        if error.reason == "auth" and not refetched:
            await self._keys.invalidate(scope=scope)
            return "refetch"
        delay = (
            None
            if breaker.state == "open"
            else retry_delay(self._policy, error, retries, remaining=deadline - time.monotonic())
        )
        if delay is None:
            hint = max(error.retry_after or 0.0, breaker.retry_in())
            raise self._unavailable(error.reason, str(error), hint or None)
        if delay > 0:
            await asyncio.sleep(delay)
        return "retry"

    def _unavailable(self, reason: str, message: str, hint: float | None) -> ProvidersUnavailable:
        retry_after = max(1, math.ceil(hint or self._policy.unavailable_retry_after))
        return ProvidersUnavailable(
            f"the tenant's embeddings model ({self.provider}/{self.model}) is unavailable"
            f" ({reason}): {message}",
            retry_after=retry_after,
        )

    def _client(self, key: SecretValue, scope: TenantScope) -> openai.AsyncOpenAI:
        # Retries are ours (above): the shared clients never retry behind our back.
        return self._clients.openai(
            tenant_id=scope.tenant_id, base_url=self._keys.entry.base_url, key=key
        )

    def _start_span(self, scope: TenantScope, attempt: int) -> Span:
        return start_span(
            f"{OPERATION} {self.model}",
            kind=SpanKind.CLIENT,
            attributes=lambda: {
                **scope.span_attributes(),
                "gen_ai.operation.name": OPERATION,
                "gen_ai.provider.name": self.provider,
                "gen_ai.request.model": self.model,
                "server.address": self.endpoint.address,
                "server.port": self.endpoint.port,
                "bulkhead.attempt": attempt,
                "gen_ai.embeddings.dimension.count": self.size,
            },
        )

    def _metric_attributes(self, error_type: str | None = None) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": self.model,
            "server.address": self.endpoint.address,
            "server.port": self.endpoint.port,
        }
        if error_type:
            attributes["error.type"] = error_type
        return attributes

    def _failed(self, span: Span, error: ProviderError, started: float) -> None:
        span.set_attribute("error.type", error.reason)
        span.set_status(Status(StatusCode.ERROR, f"{error.reason}: {error}"))
        span.end()
        OPERATION_DURATION.record(
            time.perf_counter() - started, self._metric_attributes(error.reason)
        )

    def _succeeded(self, span: Span, result: Embeddings, started: float) -> None:
        span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
        span.end()
        attributes = self._metric_attributes()
        OPERATION_DURATION.record(time.perf_counter() - started, attributes)
        TOKEN_USAGE.record(result.input_tokens, {**attributes, "gen_ai.token.type": "input"})
