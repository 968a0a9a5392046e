"""ProviderChain: the tenant's ordered providers, tried in turn until one answers.

Per attempt: a connect timeout (in the SDK), a first-token timeout (streaming) and a total
timeout, all inside the request's overall deadline. Within an entry, 429/5xx/timeouts/broken
connections are retried with full-jitter backoff, honouring Retry-After up to a cap (a longer
wait fails over instead). A refused connection fails over at once: nothing is listening, and a
retry a few milliseconds later only adds latency. 401/403 invalidates the tenant's key and
refetches it once (a rotation), then fails over. A context-length 400 goes to the next entry
(it may have a larger window); any other 400 is the request's fault and stops the chain.

Each entry has a circuit breaker per (tenant, provider, model); an open circuit is skipped
without a call. Every attempt is a `chat {model}` span (OTel GenAI conventions) under one
`chat chain` span. Streaming may fail over only until the first content token has gone to
the caller; after that a break is raised as `StreamInterrupted`.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass, field, replace

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from app.llm.breaker import BreakerPolicy, BreakerRegistry, CircuitBreaker
from app.llm.local import LocalProvider
from app.llm.provider import (
    Completion,
    CompletionRequest,
    Endpoint,
    Provider,
    ProviderError,
    StreamEvent,
)
from app.llm.remote import build_prompt
from app.problems import ApiError
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import TenantScope

_tracer = trace.get_tracer("bulkhead")
_meter = metrics.get_meter("bulkhead")
TOKEN_USAGE = _meter.create_histogram(
    "gen_ai.client.token.usage", unit="{token}", description="Tokens used per LLM call"
)
OPERATION_DURATION = _meter.create_histogram(
    "gen_ai.client.operation.duration", unit="s", description="Duration of one LLM attempt"
)
FAILOVERS = _meter.create_counter(
    "bulkhead.llm.failovers", unit="{failover}", description="Chain entries abandoned, by reason"
)

RETRYABLE = frozenset(
    {
        "rate_limited",
        "server_error",
        "timeout",
        "first_token_timeout",
        "connection_error",
        "stream_interrupted",
        "malformed_response",
    }
)
# Failures that say something about the provider (and so count towards its breaker), as
# opposed to the request (context length, bad request) or our configuration.
BREAKER_FAILURES = RETRYABLE | {"connection_refused", "auth"}


class ProvidersUnavailable(ApiError):
    """Every provider in the tenant's chain failed."""

    status, code, title = 503, "providers_unavailable", "Providers unavailable"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ProviderRejected(ApiError):
    """The provider refused the request itself (a 400 other than context length)."""

    status, code, title = 502, "provider_rejected_request", "Provider rejected the request"


class StreamInterrupted(ProviderError):
    """The provider broke off after content had reached the caller; no failover is possible."""


@dataclass(frozen=True, slots=True)
class ChainPolicy:
    """Timeouts, retries and breaker thresholds for every chain (from `LlmSettings`)."""

    connect_timeout: float = 2.0
    first_token_timeout: float = 10.0
    attempt_timeout: float = 30.0
    request_deadline: float = 60.0
    max_retries: int = 2
    backoff_base: float = 0.2
    backoff_cap: float = 2.0
    retry_after_cap: float = 5.0
    unavailable_retry_after: int = 5
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)


class UnavailableProvider:
    """A chain entry whose provider this deployment cannot call; it fails over at once."""

    endpoint = Endpoint("localhost", 0)

    def __init__(self, name: str, why: str = "is not configured") -> None:
        self.name = name
        self._why = why

    async def complete(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> Completion:
        """Always fail with reason `not_configured`.

        Raises:
            ProviderError: Always.
        """
        raise ProviderError(f"provider {self.name!r} {self._why}", reason="not_configured")

    async def stream(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Always fail with reason `not_configured`.

        Raises:
            ProviderError: Always.
        """
        raise ProviderError(f"provider {self.name!r} {self._why}", reason="not_configured")
        yield ""  # pragma: no cover - makes this an async generator

    async def invalidate_key(self, *, scope: TenantScope) -> None:
        """Nothing to forget."""

    async def aclose(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True, slots=True)
class ChainLink:
    """A manifest chain entry with the provider that serves it."""

    entry: ChainEntry
    provider: Provider


class _Run:
    """The state of one request through the chain: deadline, attempt count, spans."""

    def __init__(
        self,
        chain: ProviderChain,
        scope: TenantScope,
        stream: bool,
        request: CompletionRequest | None = None,
    ) -> None:
        self.chain = chain
        self.request = request if chain.capture_content else None
        self.scope = scope
        self.stream = stream
        self.deadline = time.monotonic() + chain.policy.request_deadline
        self.attempt = 0
        self.failover_reason = ""
        self.retry_hint = 0.0
        self.span = _tracer.start_span(
            "chat chain", attributes={**scope.span_attributes(), "gen_ai.request.stream": stream}
        )
        self.context = trace.set_span_in_context(self.span)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def start_attempt(self, link: ChainLink) -> Span:
        self.attempt += 1
        endpoint = link.provider.endpoint
        attributes: dict[str, str | int | bool] = {
            **self.scope.span_attributes(),
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": link.entry.provider,
            "gen_ai.request.model": link.entry.model,
            "gen_ai.request.stream": self.stream,
            "server.address": endpoint.address,
            "server.port": endpoint.port,
            "bulkhead.attempt": self.attempt,
        }
        if self.failover_reason:
            attributes["bulkhead.failover.reason"] = self.failover_reason
        if self.request is not None:
            attributes["gen_ai.input.messages"] = json.dumps(
                [
                    {
                        "role": "user",
                        "parts": [{"type": "text", "content": build_prompt(self.request)}],
                    }
                ]
            )
        return _tracer.start_span(
            f"chat {link.entry.model}",
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )

    def failed(self, span: Span, link: ChainLink, error: ProviderError, started: float) -> None:
        span.set_attribute("error.type", error.reason)
        span.set_status(Status(StatusCode.ERROR, f"{error.reason}: {error}"))
        span.end()
        OPERATION_DURATION.record(
            time.perf_counter() - started, _metric_attributes(link, error_type=error.reason)
        )

    def succeeded(self, span: Span, link: ChainLink, done: Completion, started: float) -> None:
        span.set_attributes(
            {
                "gen_ai.response.model": done.model,
                "gen_ai.response.id": done.response_id,
                "gen_ai.usage.input_tokens": done.input_tokens,
                "gen_ai.usage.output_tokens": done.output_tokens,
                "gen_ai.response.finish_reasons": [done.finish_reason],
            }
        )
        if self.request is not None:
            span.set_attribute(
                "gen_ai.output.messages",
                json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": done.text}],
                            "finish_reason": done.finish_reason,
                        }
                    ]
                ),
            )
        span.end()
        attributes = _metric_attributes(link, response_model=done.model)
        OPERATION_DURATION.record(time.perf_counter() - started, attributes)
        TOKEN_USAGE.record(done.input_tokens, {**attributes, "gen_ai.token.type": "input"})
        TOKEN_USAGE.record(done.output_tokens, {**attributes, "gen_ai.token.type": "output"})
        self.span.set_attribute("bulkhead.attempts", self.attempt)
        self.span.end()

    def fail_over(self, link: ChainLink, reason: str) -> None:
        self.failover_reason = reason
        FAILOVERS.add(
            1,
            {
                "bulkhead.failover.reason": reason,
                "gen_ai.provider.name": link.entry.provider,
                "gen_ai.request.model": link.entry.model,
            },
        )

    def exhausted(self) -> ProvidersUnavailable:
        retry_after = max(
            1, math.ceil(self.retry_hint or self.chain.policy.unavailable_retry_after)
        )
        self.span.set_attribute("bulkhead.attempts", self.attempt)
        self.span.set_attribute("error.type", "providers_unavailable")
        self.span.set_status(Status(StatusCode.ERROR, self.failover_reason))
        self.span.end()
        return ProvidersUnavailable(
            f"every provider in the tenant's chain failed (last: {self.failover_reason})",
            retry_after=retry_after,
        )

    def abandon(self, kind: str) -> None:
        if not self.span.is_recording():
            return  # already ended: the answer was complete when the caller let go
        self.span.set_attribute("bulkhead.attempts", self.attempt)
        self.span.set_attribute("error.type", kind)
        self.span.set_status(Status(StatusCode.ERROR, kind))
        self.span.end()


def _metric_attributes(
    link: ChainLink, *, error_type: str | None = None, response_model: str | None = None
) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": link.entry.provider,
        "gen_ai.request.model": link.entry.model,
        "server.address": link.provider.endpoint.address,
        "server.port": link.provider.endpoint.port,
    }
    if error_type:
        attributes["error.type"] = error_type
    if response_model:
        attributes["gen_ai.response.model"] = response_model
    return attributes


class ProviderChain:
    """Tries the tenant's providers in manifest order, with retries, breakers and deadlines."""

    def __init__(
        self,
        links: list[ChainLink],
        *,
        policy: ChainPolicy | None = None,
        breakers: BreakerRegistry | None = None,
        capture_content: bool = False,
    ) -> None:
        if not links:
            raise ValueError("a provider chain needs at least one entry")
        self._links = links
        # Prompt and answer text go on spans only when the tenant opted in (privacy).
        self.capture_content = capture_content
        self.policy = policy or ChainPolicy()
        self._breakers = breakers or BreakerRegistry(self.policy.breaker)

    @classmethod
    def from_entries(cls, entries: tuple[ChainEntry, ...]) -> ProviderChain:
        """A chain of `local` entries only (remote entries fail over): for offline use."""
        local = LocalProvider()
        links = [
            ChainLink(
                entry, local if entry.provider == "local" else UnavailableProvider(entry.provider)
            )
            for entry in entries
        ]
        return cls(links)

    @property
    def entries(self) -> tuple[ChainEntry, ...]:
        """The manifest entries, in chain order."""
        return tuple(link.entry for link in self._links)

    def narrowed(self, indices: list[int]) -> ProviderChain:
        """A chain of only these entries, sharing their providers, breakers and policy.

        It borrows the providers: close the full chain, never this one.
        """
        return ProviderChain(
            [self._links[i] for i in indices],
            policy=self.policy,
            breakers=self._breakers,
            capture_content=self.capture_content,
        )

    async def aclose(self) -> None:
        """Close every provider's connections."""
        for link in self._links:
            await link.provider.aclose()

    def breaker_for(self, scope: TenantScope, index: int) -> CircuitBreaker | None:
        """The breaker guarding entry `index` for `scope`'s tenant (None for `local`)."""
        return self._breaker(scope, self._links[index])

    def _attempt_budget(self, run: _Run, breaker: CircuitBreaker | None) -> float:
        """Seconds the next attempt may take; the request is over when none are left.

        Raises:
            ProvidersUnavailable: The request deadline has passed.
        """
        budget = min(self.policy.attempt_timeout, run.remaining())
        if budget <= 0:
            if breaker is not None:
                breaker.release()
            run.failover_reason = "deadline_exceeded"
            raise run.exhausted()
        return budget

    def _breaker(self, scope: TenantScope, link: ChainLink) -> CircuitBreaker | None:
        if link.entry.provider == "local":
            return None  # the last resort never fails, so it is never cut off
        entry = link.entry
        return self._breakers.get(scope.tenant_id, entry.provider, entry.model, entry.base_url)

    def _retry_delay(self, run: _Run, error: ProviderError, retries: int) -> float | None:
        """Seconds to wait before retrying this entry, or None to fail over."""
        policy = self.policy
        if error.reason not in RETRYABLE or retries >= policy.max_retries:
            return None
        if error.retry_after is not None:
            if error.retry_after > policy.retry_after_cap:
                run.retry_hint = max(run.retry_hint, error.retry_after)
                return None
            delay = error.retry_after
        else:
            delay = random.uniform(0, min(policy.backoff_cap, policy.backoff_base * 2**retries))  # noqa: S311 - jitter, not crypto
        return delay if delay < run.remaining() else None

    async def _after_failure(
        self, run: _Run, link: ChainLink, error: ProviderError, retries: int, refetched: bool
    ) -> str:
        """Decide what follows a failed attempt: `retry`, `refetch` or `failover`.

        Raises:
            ProviderRejected: The provider refused the request itself; no entry will do better.
        """
        breaker = self._breaker(run.scope, link)
        if breaker is not None:
            if error.reason in BREAKER_FAILURES:
                breaker.failure()
                if breaker.state == "open":
                    run.retry_hint = max(run.retry_hint, breaker.retry_in())
            else:
                breaker.release()
        if error.reason == "bad_request":
            run.span.set_attribute("error.type", "bad_request")
            run.span.end()
            raise ProviderRejected(f"{link.entry.provider} refused the request: {error}")
        if error.reason == "auth" and not refetched:
            await link.provider.invalidate_key(scope=run.scope)
            return "refetch"
        if breaker is not None and breaker.state == "open":
            return "failover"
        delay = self._retry_delay(run, error, retries)
        if delay is None:
            return "failover"
        if delay > 0:
            await asyncio.sleep(delay)
        return "retry"

    async def complete(self, *, scope: TenantScope, request: CompletionRequest) -> Completion:
        """Answer with the first provider that succeeds.

        Raises:
            ProvidersUnavailable: Every entry failed, or the request deadline passed.
            ProviderRejected: A provider refused the request itself (not context length).
        """
        run = _Run(self, scope, stream=False, request=request)
        try:
            for link in self._links:
                breaker = self._breaker(scope, link)
                if _circuit_open(run, link, breaker):
                    continue
                retries, refetched = 0, False
                asked = replace(request, model=link.entry.model)
                while True:
                    budget = self._attempt_budget(run, breaker)
                    span, started = run.start_attempt(link), time.perf_counter()
                    try:
                        async with asyncio.timeout(budget):
                            completion = await link.provider.complete(
                                asked, scope=scope, time_budget=budget
                            )
                    except (ProviderError, TimeoutError) as exc:
                        error = _as_provider_error(exc)
                        run.failed(span, link, error, started)
                        step = await self._after_failure(run, link, error, retries, refetched)
                        if step == "failover":
                            run.fail_over(link, error.reason)
                            break
                        refetched = refetched or step == "refetch"
                        retries += step == "retry"
                        continue
                    except BaseException:
                        span.end()
                        if breaker is not None:
                            breaker.release()
                        raise
                    if breaker is not None:
                        breaker.success()
                    run.succeeded(span, link, completion, started)
                    return completion
        except (ProvidersUnavailable, ProviderRejected):
            raise
        except BaseException as exc:
            run.abandon(type(exc).__name__)
            raise
        raise run.exhausted()

    async def stream(
        self, *, scope: TenantScope, request: CompletionRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream the first answer that starts: text deltas, then one `Completion`.

        Failover happens only before the first content token has been yielded.

        Raises:
            ProvidersUnavailable: Every entry failed before streaming any content.
            ProviderRejected: A provider refused the request itself (not context length).
            StreamInterrupted: The provider broke off after content was sent.
        """
        run = _Run(self, scope, stream=True, request=request)
        try:
            for link in self._links:
                breaker = self._breaker(scope, link)
                if _circuit_open(run, link, breaker):
                    continue
                retries, refetched = 0, False
                asked = replace(request, model=link.entry.model)
                while True:
                    budget = self._attempt_budget(run, breaker)
                    span, started = run.start_attempt(link), time.perf_counter()
                    attempt_deadline = asyncio.get_running_loop().time() + budget
                    events = link.provider.stream(asked, scope=scope, time_budget=budget)
                    sent_content = False
                    try:
                        first_token_by = min(
                            attempt_deadline,
                            asyncio.get_running_loop().time() + self.policy.first_token_timeout,
                        )
                        while True:
                            by = attempt_deadline if sent_content else first_token_by
                            try:
                                async with asyncio.timeout_at(by):
                                    event = await anext(events)
                            except StopAsyncIteration:
                                raise ProviderError(
                                    "the stream ended before the answer",
                                    reason="stream_interrupted",
                                ) from None
                            except TimeoutError:
                                reason = "timeout" if sent_content else "first_token_timeout"
                                raise ProviderError(
                                    "the provider stopped sending in time", reason=reason
                                ) from None
                            if isinstance(event, Completion):
                                done = event
                                break
                            if event:
                                sent_content = True
                                yield event
                    except ProviderError as error:
                        run.failed(span, link, error, started)
                        if sent_content:
                            if breaker is not None and error.reason in BREAKER_FAILURES:
                                breaker.failure()
                            elif breaker is not None:
                                breaker.release()
                            run.failover_reason = error.reason
                            run.abandon(error.reason)
                            raise StreamInterrupted(str(error), reason=error.reason) from None
                        step = await self._after_failure(run, link, error, retries, refetched)
                        if step == "failover":
                            run.fail_over(link, error.reason)
                            break
                        refetched = refetched or step == "refetch"
                        retries += step == "retry"
                        continue
                    except BaseException:
                        # The caller went away (or was cancelled): no verdict on the provider.
                        span.set_attribute("error.type", "cancelled")
                        span.end()
                        if breaker is not None:
                            breaker.release()
                        raise
                    finally:
                        with suppress(Exception):
                            await events.aclose()
                    if breaker is not None:
                        breaker.success()
                    run.succeeded(span, link, done, started)
                    yield done
                    return
        except (ProvidersUnavailable, ProviderRejected, StreamInterrupted):
            raise
        except BaseException as exc:
            run.abandon(type(exc).__name__)
            raise
        raise run.exhausted()


def _circuit_open(run: _Run, link: ChainLink, breaker: CircuitBreaker | None) -> bool:
    """Whether `link` is skipped because its breaker is open (recorded as a failover)."""
    if breaker is None or breaker.allow():
        return False
    run.span.add_event("circuit_open", {"gen_ai.request.model": link.entry.model})
    run.retry_hint = max(run.retry_hint, breaker.retry_in())
    run.fail_over(link, "circuit_open")
    return True


def _as_provider_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    return ProviderError("the attempt ran out of time", reason="timeout")
