"""ProviderChain: the tenant's ordered providers, tried in turn until one answers.

Per attempt: a connect timeout (in the SDK), a first-token timeout (streaming) and a total
timeout, all inside the request's overall deadline. Within an entry, 429/5xx/timeouts/broken
connections are retried with full-jitter backoff, honouring Retry-After up to a cap (a longer
wait fails over instead). A refused connection fails over at once: nothing is listening, and a
retry a few milliseconds later only adds latency. 401/403 invalidates the tenant's key and
refetches it once (a rotation), then fails over. A context-length 400 goes to the next entry
(it may have a larger window); any other 400 is the request's fault and stops the chain.

Each entry has a circuit breaker per (tenant, provider, model); an open circuit is skipped
without a call. Streaming may fail over only until the first content token has gone to the
caller; after that a break is raised as `StreamInterrupted`.

Alongside: `policy` (timeouts, retry and breaker rules), `links` (entries and their
providers), `run` (one request's deadline, spans, metrics and outcomes), `streaming` (a
streamed attempt's deadlines).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import replace

from app.llm.breaker import BreakerRegistry, CircuitBreaker
from app.llm.clients import SdkClients
from app.llm.links import ChainLink, UnavailableProvider
from app.llm.local import LocalProvider
from app.llm.policy import BREAKER_FAILURES, RETRYABLE, ChainPolicy, retry_delay
from app.llm.provider import Completion, CompletionRequest, ProviderError, StreamEvent
from app.llm.run import (
    ChainRun,
    ProviderRejected,
    ProvidersUnavailable,
    StreamInterrupted,
    as_provider_error,
    circuit_open,
)
from app.llm.streaming import AttemptClock, broken_off
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import TenantScope

# The chain's public surface, importable from here as before the split.
__all__ = [
    "ChainLink",
    "ChainPolicy",
    "ProviderChain",
    "ProviderRejected",
    "ProvidersUnavailable",
    "StreamInterrupted",
    "UnavailableProvider",
]


class ProviderChain:
    """Tries the tenant's providers in manifest order, with retries, breakers and deadlines."""

    def __init__(
        self,
        links: list[ChainLink],
        *,
        policy: ChainPolicy | None = None,
        breakers: BreakerRegistry | None = None,
        capture_content: bool = False,
        owned_clients: SdkClients | None = None,
    ) -> None:
        if not links:
            raise ValueError("a provider chain needs at least one entry")
        self._links = links
        # Prompt and answer text go on spans only when the tenant opted in (privacy).
        self.capture_content = capture_content
        self.policy = policy or ChainPolicy()
        self._breakers = breakers or BreakerRegistry(self.policy.breaker)
        self._owned_clients = owned_clients

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
        """Close every provider's connections, and the SDK pools if the chain owns them."""
        for link in self._links:
            await link.provider.aclose()
        if self._owned_clients is not None:
            await self._owned_clients.aclose()

    def _run(self, scope: TenantScope, *, stream: bool, request: CompletionRequest) -> ChainRun:
        # Prompt and answer text go on spans only when the tenant opted in (privacy).
        captured = request if self.capture_content else None
        return ChainRun(self.policy, scope, stream=stream, request=captured)

    def breaker_for(self, scope: TenantScope, index: int) -> CircuitBreaker | None:
        """The breaker guarding entry `index` for `scope`'s tenant (None for `local`)."""
        return self._breaker(scope, self._links[index])

    def _attempt_budget(self, run: ChainRun, breaker: CircuitBreaker | None) -> float:
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

    def _retry_delay(self, run: ChainRun, error: ProviderError, retries: int) -> float | None:
        """Seconds to wait before retrying this entry, or None to fail over."""
        policy = self.policy
        retryable = error.reason in RETRYABLE and retries < policy.max_retries
        if (
            retryable
            and error.retry_after is not None
            and error.retry_after > policy.retry_after_cap
        ):
            # Not waited for here: the caller's Retry-After says when to come back instead.
            run.retry_hint = max(run.retry_hint, error.retry_after)
        return retry_delay(policy, error, retries, remaining=run.remaining())

    async def _after_failure(
        self, run: ChainRun, link: ChainLink, error: ProviderError, retries: int, refetched: bool
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
        run = self._run(scope, stream=False, request=request)
        try:
            for link in self._links:
                breaker = self._breaker(scope, link)
                if circuit_open(run, link, breaker):
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
                        error = as_provider_error(exc)
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
        run = self._run(scope, stream=True, request=request)
        try:
            for link in self._links:
                breaker = self._breaker(scope, link)
                if circuit_open(run, link, breaker):
                    continue
                retries, refetched = 0, False
                asked = replace(request, model=link.entry.model)
                while True:
                    budget = self._attempt_budget(run, breaker)
                    span, started = run.start_attempt(link), time.perf_counter()
                    clock = AttemptClock(
                        budget=budget, first_token_timeout=self.policy.first_token_timeout
                    )
                    events = link.provider.stream(asked, scope=scope, time_budget=budget)
                    sent_content = False
                    try:
                        while True:
                            event = await clock.next_event(events, sent_content=sent_content)
                            if isinstance(event, Completion):
                                done = event
                                break
                            if event:
                                sent_content = True
                                yield event
                    except ProviderError as error:
                        run.failed(span, link, error, started)
                        if sent_content:
                            raise broken_off(run, breaker, error) from None
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
