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
from typing import Any

from opentelemetry.trace import Span

from app.llm.breaker import BreakerRegistry, CircuitBreaker
from app.llm.clients import SdkClients
from app.llm.links import ChainLink, UnavailableProvider
from app.llm.local import LocalProvider
from app.llm.policy import BREAKER_FAILURES, RETRYABLE, TIMEOUTS, ChainPolicy, retry_delay
from app.llm.provider import Completion, CompletionRequest, ProviderError, StreamEvent
from app.llm.run import (
    AttemptRecord,
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
    "AttemptRecord",
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

    def _run(
        self,
        scope: TenantScope,
        *,
        stream: bool,
        request: CompletionRequest,
        ledger: list[AttemptRecord] | None,
    ) -> ChainRun:
        # Prompt and answer text go on spans only when the tenant opted in (privacy).
        captured = request if self.capture_content else None
        return ChainRun(self.policy, scope, stream=stream, request=captured, ledger=ledger)

    def breaker_for(self, scope: TenantScope, index: int) -> CircuitBreaker | None:
        """The breaker guarding entry `index` for `scope`'s tenant (None for `local`)."""
        return self._breaker(scope, self._links[index])

    def _turn_end(self, run: ChainRun, index: int) -> float:
        """When entry `index`'s turn ends (monotonic): its even share of the time left.

        The last entry's share is all of it. No attempt or retry of the entry starts after
        its turn, so every later entry still gets a turn before the request deadline.
        """
        return time.monotonic() + run.remaining() / (len(self._links) - index)

    def _attempt_budget(self, run: ChainRun, turn_end: float) -> float | None:
        """Seconds the next attempt may take; None when the turn or the request is over."""
        if run.remaining() <= 0:
            run.failover_reason = "deadline_exceeded"
            return None
        if time.monotonic() >= turn_end:
            return None
        return min(self.policy.attempt_timeout, run.remaining())

    def _out_of_time(self, run: ChainRun, link: ChainLink, breaker: CircuitBreaker | None) -> None:
        """Leave `link`: its turn (or the request) has no time left for another attempt."""
        if breaker is not None:
            breaker.release()
        if run.remaining() > 0:
            run.fail_over(link, "turn_expired")

    def _breaker(self, scope: TenantScope, link: ChainLink) -> CircuitBreaker | None:
        if link.entry.provider == "local":
            return None  # the last resort never fails, so it is never cut off
        entry = link.entry
        return self._breakers.get(scope.tenant_id, entry.provider, entry.model, entry.base_url)

    def _judge(self, run: ChainRun, link: ChainLink, error: ProviderError) -> None:
        """Tell the entry's breaker about a failed attempt."""
        breaker = self._breaker(run.scope, link)
        if breaker is None:
            return
        if error.reason in BREAKER_FAILURES:
            breaker.failure()
            if breaker.state == "open":
                run.retry_hint = max(run.retry_hint, breaker.retry_in())
        else:
            breaker.release()

    def _verdict(self, run: ChainRun, link: ChainLink, error: ProviderError) -> None:
        """Judge a failed attempt (`_judge`); stop on a request the provider refused.

        Raises:
            ProviderRejected: The provider refused the request itself; no entry will do better.
        """
        self._judge(run, link, error)
        if error.reason == "bad_request":
            run.span.set_attribute("error.type", "bad_request")
            run.span.end()
            raise ProviderRejected(f"{link.entry.provider} refused the request: {error}")

    async def _after_failure(
        self,
        run: ChainRun,
        index: int,
        error: ProviderError,
        *,
        retries: int,
        refetched: bool,
        turn_end: float,
    ) -> str:
        """Decide what follows a failed attempt: `retry`, `refetch` or `failover`.

        Raises:
            ProviderRejected: The provider refused the request itself; no entry will do better.
        """
        link = self._links[index]
        self._verdict(run, link, error)
        if error.reason == "auth" and not refetched:
            await link.provider.invalidate_key(scope=run.scope)
            return "refetch"
        breaker = self._breaker(run.scope, link)
        if breaker is not None and breaker.state == "open":
            return "failover"
        if error.reason in TIMEOUTS and index < len(self._links) - 1:
            return "failover"
        policy = self.policy
        if (
            error.reason in RETRYABLE
            and retries < policy.max_retries
            and error.retry_after is not None
            and error.retry_after > policy.retry_after_cap
        ):
            # Not waited for here: the caller's Retry-After says when to come back instead.
            run.retry_hint = max(run.retry_hint, error.retry_after)
        left = min(run.remaining(), turn_end - time.monotonic())
        delay = retry_delay(policy, error, retries, remaining=left)
        if delay is None:
            return "failover"
        if delay > 0:
            await asyncio.sleep(delay)
        return "retry"

    async def complete(
        self,
        *,
        scope: TenantScope,
        request: CompletionRequest,
        attempts: list[AttemptRecord] | None = None,
    ) -> Completion:
        """Answer with the first provider that succeeds.

        `attempts`, if given, receives a record of every call and skipped entry.

        Raises:
            ProvidersUnavailable: Every entry failed, or the request deadline passed.
            ProviderRejected: A provider refused the request itself (not context length).
        """
        run = self._run(scope, stream=False, request=request, ledger=attempts)
        try:
            completion = await self._complete_from(run, 0, request)
        except (ProvidersUnavailable, ProviderRejected):
            raise
        except BaseException as exc:
            run.abandon(type(exc).__name__)
            raise
        if completion is None:
            raise run.exhausted()
        return completion

    async def _complete_from(
        self, run: ChainRun, start: int, request: CompletionRequest
    ) -> Completion | None:
        """The answer of the first entry from `start` on that gives one; None if none does."""
        for index in range(start, len(self._links)):
            if run.remaining() <= 0:
                run.failover_reason = "deadline_exceeded"
                return None
            link = self._links[index]
            breaker = self._breaker(run.scope, link)
            if not circuit_open(run, link, breaker):
                return await self._complete_entry(run, index, request, breaker)
        return None

    async def _complete_entry(
        self,
        run: ChainRun,
        index: int,
        request: CompletionRequest,
        breaker: CircuitBreaker | None,
    ) -> Completion | None:
        """Entry `index`'s turn, then the rest of the chain's if it fails.

        While another entry remains, an answer not in `hedge_after` into the turn starts the
        rest of the chain alongside the late attempt (`_hedged`): a plain answer arrives whole,
        so a long one and a hung provider look the same until it does.
        """
        link = self._links[index]
        asked = replace(request, model=link.entry.model)
        turn_end = self._turn_end(run, index)
        last = index == len(self._links) - 1
        hedge_at = None if last else min(time.monotonic() + self.policy.hedge_after, turn_end)
        retries, refetched = 0, False
        while True:
            budget = self._attempt_budget(run, turn_end)
            if budget is None:
                self._out_of_time(run, link, breaker)
                return await self._complete_from(run, index + 1, request)
            span, started = run.start_attempt(link), time.perf_counter()
            call = _call(link, asked, run.scope, budget)
            late: asyncio.Task[Completion] | None = None
            try:
                if hedge_at is None:
                    completion = await call
                else:
                    task = asyncio.ensure_future(call)
                    if await _done_by(task, hedge_at):
                        completion = task.result()
                    else:
                        late = task
            except (ProviderError, TimeoutError) as exc:
                error = as_provider_error(exc)
                run.failed(span, link, error, started)
                step = await self._after_failure(
                    run, index, error, retries=retries, refetched=refetched, turn_end=turn_end
                )
                if step == "failover":
                    run.fail_over(link, error.reason)
                    return await self._complete_from(run, index + 1, request)
                refetched = refetched or step == "refetch"
                retries += step == "retry"
                continue
            except BaseException:
                run.cancelled(span, link, started)
                if breaker is not None:
                    breaker.release()
                raise
            if late is not None:
                return await self._hedged(run, index, request, late, span, started)
            if breaker is not None:
                breaker.success()
            run.succeeded(span, link, completion, started)
            return completion

    async def _hedged(
        self,
        run: ChainRun,
        index: int,
        request: CompletionRequest,
        late: asyncio.Task[Completion],
        span: Span,
        started: float,
    ) -> Completion | None:
        """Race a late attempt of entry `index` against the rest of the chain.

        The first answer wins and the other side is cancelled. A late attempt that loses
        counts as a timeout for its breaker (it was late: a hung provider is cut off this
        way); the rest of the chain's cancelled attempts get no verdict. If the rest fails,
        the late attempt is still awaited; if the late attempt fails, the rest carries on.

        Raises:
            ProviderRejected: A provider refused the request itself.
        """
        link = self._links[index]
        breaker = self._breaker(run.scope, link)
        run.span.add_event("hedge", {"gen_ai.request.model": link.entry.model})
        run.failover_reason = "hedge"
        rival = asyncio.ensure_future(self._complete_from(run, index + 1, request))
        settled = False
        try:
            await asyncio.wait({late, rival}, return_when=asyncio.FIRST_COMPLETED)
            if rival.done():
                answer = rival.result()
                if answer is not None:
                    settled = True
                    await self._outrun(run, link, late, span, started)
                    return answer
                await asyncio.wait({late})
            settled = True
            try:
                completion = late.result()
            except (ProviderError, TimeoutError) as exc:
                error = as_provider_error(exc)
                run.failed(span, link, error, started)
                self._verdict(run, link, error)
                run.fail_over(link, error.reason)
                return await rival
            await _cancel(rival)
            if breaker is not None:
                breaker.success()
            run.succeeded(span, link, completion, started)
            return completion
        except BaseException:
            if not settled:
                await _cancel(late)
                run.cancelled(span, link, started)
                if breaker is not None:
                    breaker.release()
            raise
        finally:
            await _cancel(rival)

    async def _outrun(
        self,
        run: ChainRun,
        link: ChainLink,
        late: asyncio.Task[Completion],
        span: Span,
        started: float,
    ) -> None:
        """Close a late attempt that another entry beat to the answer."""
        breaker = self._breaker(run.scope, link)
        if late.done() and not late.cancelled() and late.exception() is None:
            # It answered in the same instant: not late after all, but its answer is unused.
            run.cancelled(span, link, started)
            if breaker is not None:
                breaker.release()
            return
        if late.done() and not late.cancelled():
            error = as_provider_error(late.exception() or TimeoutError())
        else:
            await _cancel(late)
            error = ProviderError(
                "another entry answered first; this one was late", reason="timeout"
            )
        run.failed(span, link, error, started)
        self._judge(run, link, error)
        run.fail_over(link, error.reason)

    async def stream(
        self,
        *,
        scope: TenantScope,
        request: CompletionRequest,
        attempts: list[AttemptRecord] | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream the first answer that starts: text deltas, then one `Completion`.

        Failover happens only before the first content token has been yielded. `attempts`,
        if given, receives a record of every call and skipped entry.

        Raises:
            ProvidersUnavailable: Every entry failed before streaming any content.
            ProviderRejected: A provider refused the request itself (not context length).
            StreamInterrupted: The provider broke off after content was sent.
        """
        run = self._run(scope, stream=True, request=request, ledger=attempts)
        try:
            for index, link in enumerate(self._links):
                breaker = self._breaker(scope, link)
                if circuit_open(run, link, breaker):
                    continue
                turn_end = self._turn_end(run, index)
                retries, refetched = 0, False
                asked = replace(request, model=link.entry.model)
                while True:
                    budget = self._attempt_budget(run, turn_end)
                    if budget is None:
                        self._out_of_time(run, link, breaker)
                        break
                    span, started = run.start_attempt(link), time.perf_counter()
                    # The first token must come within the entry's turn too; after it, the
                    # answer has only the attempt's own budget (no failover is possible then).
                    clock = AttemptClock(
                        budget=budget,
                        first_token_timeout=min(
                            self.policy.first_token_timeout, turn_end - time.monotonic()
                        ),
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
                        step = await self._after_failure(
                            run,
                            index,
                            error,
                            retries=retries,
                            refetched=refetched,
                            turn_end=turn_end,
                        )
                        if step == "failover":
                            run.fail_over(link, error.reason)
                            break
                        refetched = refetched or step == "refetch"
                        retries += step == "retry"
                        continue
                    except BaseException:
                        # The caller went away (or was cancelled): no verdict on the provider.
                        run.cancelled(span, link, started)
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
                if run.remaining() <= 0:
                    break
        except (ProvidersUnavailable, ProviderRejected, StreamInterrupted):
            raise
        except BaseException as exc:
            run.abandon(type(exc).__name__)
            raise
        raise run.exhausted()


async def _call(
    link: ChainLink, request: CompletionRequest, scope: TenantScope, budget: float
) -> Completion:
    """One plain attempt, cut off when its budget runs out (`TimeoutError`)."""
    async with asyncio.timeout(budget):
        return await link.provider.complete(request, scope=scope, time_budget=budget)


async def _done_by(task: asyncio.Task[Completion], when: float) -> bool:
    """Whether `task` finished by `when` (monotonic); it is cancelled if the wait is."""
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, when - time.monotonic()))
    except BaseException:
        await _cancel(task)
        raise
    return bool(done)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it has wound down (its own cleanup included)."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
