"""The rules every entry's turn follows: its share of the time, retries, the breaker's verdict.

Shared by the plain path (`app/llm/hedging.py`) and the streamed one (`ProviderChain.stream`).

Timing: an entry's turn is its even share of the time left before the request deadline (the
last entry's is all of it); no attempt or retry of the entry starts after its turn ends, so
every later entry gets a turn. Within an entry, 429/5xx/broken connections are retried with
full-jitter backoff, honouring Retry-After up to a cap (a longer wait fails over instead); a
timeout is retried only on the last entry (elsewhere the next entry is a better bet than the
provider that just hung). A refused connection fails over at once: nothing is listening, and
a retry a few milliseconds later only adds latency. 401/403 invalidates the tenant's key and
refetches it once (a rotation), then fails over. A context-length 400 goes to the next entry
(it may have a larger window); any other 400 is the request's fault and stops the chain.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from app.llm.breaker import BreakerRegistry, CircuitBreaker
from app.llm.links import ChainLink
from app.llm.policy import BREAKER_FAILURES, RETRYABLE, TIMEOUTS, ChainPolicy, retry_delay
from app.llm.provider import Completion, ProviderError
from app.llm.run import ChainRun, ProviderRejected
from app.tenancy.scope import TenantScope

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class ChainRules:
    """A chain's entries, policy and breakers, and the decisions every attempt goes through."""

    def __init__(
        self, links: list[ChainLink], policy: ChainPolicy, breakers: BreakerRegistry
    ) -> None:
        self.links = links
        self.policy = policy
        self.breakers = breakers

    def turn_end(self, run: ChainRun, index: int) -> float:
        """When entry `index`'s turn ends (monotonic): its even share of the time left.

        The last entry's share is all of it. No attempt or retry of the entry starts after
        its turn, so every later entry still gets a turn before the request deadline.
        """
        return time.monotonic() + run.remaining() / (len(self.links) - index)

    def attempt_budget(self, run: ChainRun, turn_end: float) -> float | None:
        """Seconds the next attempt may take; None when the turn or the request is over."""
        if run.remaining() <= 0:
            run.failover_reason = "deadline_exceeded"
            return None
        if time.monotonic() >= turn_end:
            return None
        return min(self.policy.attempt_timeout, run.remaining())

    def out_of_time(self, run: ChainRun, link: ChainLink, breaker: CircuitBreaker | None) -> None:
        """Leave `link`: its turn (or the request) has no time left for another attempt."""
        if breaker is not None:
            breaker.release()
        if run.remaining() > 0:
            run.fail_over(link, "turn_expired")

    def breaker(self, scope: TenantScope, link: ChainLink) -> CircuitBreaker | None:
        """The breaker of `link` for `scope`'s tenant (None for `local`)."""
        if link.entry.provider == "local":
            return None  # the last resort never fails, so it is never cut off
        entry = link.entry
        return self.breakers.get(scope.tenant_id, entry.provider, entry.model, entry.base_url)

    def judge(
        self, run: ChainRun, link: ChainLink, error: ProviderError, *, late: bool = False
    ) -> None:
        """Tell the entry's breaker about a failed attempt (`late`: see `CircuitBreaker`)."""
        breaker = self.breaker(run.scope, link)
        if breaker is None:
            return
        if error.reason in BREAKER_FAILURES:
            breaker.failure(late=late)
            if breaker.state == "open":
                run.retry_hint = max(run.retry_hint, breaker.retry_in())
        else:
            breaker.release()

    def verdict(self, run: ChainRun, link: ChainLink, error: ProviderError) -> None:
        """Judge a failed attempt (`_judge`); stop on a request the provider refused.

        Raises:
            ProviderRejected: The provider refused the request itself; no entry will do better.
        """
        self.judge(run, link, error)
        if error.reason == "bad_request":
            run.span.set_attribute("error.type", "bad_request")
            run.span.end()
            raise ProviderRejected(f"{link.entry.provider} refused the request: {error}")

    async def after_failure(
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
        link = self.links[index]
        self.verdict(run, link, error)
        if error.reason == "auth" and not refetched:
            await link.provider.invalidate_key(scope=run.scope)
            return "refetch"
        breaker = self.breaker(run.scope, link)
        if breaker is not None and breaker.state == "open":
            return "failover"
        if error.reason in TIMEOUTS and index < len(self.links) - 1:
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


class EntryTurn:
    """One entry's turn in one request: its end, its breaker, its retries and key refetch.

    The plain path (`hedging`) and the streamed one (`ProviderChain.stream`) run the same
    loop over it: ask `budget()` for each attempt, `retry(error)` after each failure, and end
    with `answered(...)` or `abandoned(...)`.
    """

    def __init__(
        self, rules: ChainRules, run: ChainRun, index: int, breaker: CircuitBreaker | None
    ) -> None:
        self.rules = rules
        self.run = run
        self.index = index
        self.link = rules.links[index]
        self.breaker = breaker
        self.end = rules.turn_end(run, index)
        self._retries = 0
        self._refetched = False

    def budget(self) -> float | None:
        """Seconds the next attempt may take; None (the entry is left) when the turn is over."""
        budget = self.rules.attempt_budget(self.run, self.end)
        if budget is None:
            self.rules.out_of_time(self.run, self.link, self.breaker)
        return budget

    async def retry(self, error: ProviderError) -> bool:
        """After a failed attempt: True to try the entry again, False when it was failed over.

        Raises:
            ProviderRejected: The provider refused the request itself; no entry will do better.
        """
        step = await self.rules.after_failure(
            self.run,
            self.index,
            error,
            retries=self._retries,
            refetched=self._refetched,
            turn_end=self.end,
        )
        if step == "failover":
            self.run.fail_over(self.link, error.reason)
            return False
        self._refetched = self._refetched or step == "refetch"
        self._retries += step == "retry"
        return True

    def answered(self, span: Span, completion: Completion, started: float) -> None:
        """The attempt answered: close its breaker's trial and record it."""
        if self.breaker is not None:
            self.breaker.success()
        self.run.succeeded(span, self.link, completion, started)

    def abandoned(self, span: Span, started: float) -> None:
        """The caller went away (or another answer won): no verdict on the provider."""
        self.run.cancelled(span, self.link, started)
        if self.breaker is not None:
            self.breaker.release()
