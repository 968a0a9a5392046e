"""ProviderChain: the tenant's ordered providers, tried in turn until one answers.

Timing model (defaults in `LlmSettings`; docs/llm-providers.md): each attempt has a connect
timeout (in the SDK) and a total timeout, inside the request's deadline; each entry a turn, its
even share of the time left (`rules`). A streamed attempt must produce its first content token
within the first-token timeout, or the chain moves on; a plain attempt that is late is hedged
(`hedging`): the rest of the chain starts alongside it and the first answer wins. A timeout
is retried only on the last entry. So a chain reaches its next entry in bounded time even
when a provider accepts the connection and never answers.

Each entry has a circuit breaker per (tenant, provider, model, endpoint); an open circuit is
skipped without a call. Streaming may fail over only until the first content token has gone to
the caller; after that a break is raised as `StreamInterrupted`.

Alongside: `policy` (timeouts, retry and breaker settings), `rules` (what follows a failure,
turns), `hedging` (the plain path), `links` (entries and their providers), `run` (one request's
deadline, spans, metrics, ledger and outcomes), `streaming` (a streamed attempt's deadlines).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import replace

from app.llm.breaker import BreakerRegistry, CircuitBreaker
from app.llm.clients import SdkClients
from app.llm.hedging import complete_from
from app.llm.links import ChainLink, UnavailableProvider
from app.llm.local import LocalProvider
from app.llm.policy import ChainPolicy
from app.llm.provider import Completion, CompletionRequest, ProviderError, StreamEvent
from app.llm.rules import ChainRules, EntryTurn
from app.llm.run import (
    AttemptRecord,
    ChainRun,
    ProviderRejected,
    ProvidersUnavailable,
    StreamInterrupted,
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
        chosen = policy or ChainPolicy()
        self._rules = ChainRules(links, chosen, breakers or BreakerRegistry(chosen.breaker))
        self._owned_clients = owned_clients

    @property
    def policy(self) -> ChainPolicy:
        """Timeouts, retries and breaker thresholds (settable: tests and benchmarks tune it)."""
        return self._rules.policy

    @policy.setter
    def policy(self, policy: ChainPolicy) -> None:
        self._rules.policy = policy

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
            breakers=self._rules.breakers,
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
        return self._rules.breaker(scope, self._links[index])

    async def complete(
        self,
        *,
        scope: TenantScope,
        request: CompletionRequest,
        attempts: list[AttemptRecord] | None = None,
    ) -> Completion:
        """Answer with the first provider that succeeds (hedged when one is late).

        `attempts`, if given, receives a record of every call and skipped entry.

        Raises:
            ProvidersUnavailable: Every entry failed, or the request deadline passed.
            ProviderRejected: A provider refused the request itself (not context length).
        """
        run = self._run(scope, stream=False, request=request, ledger=attempts)
        try:
            completion = await complete_from(self._rules, run, 0, request)
        except (ProvidersUnavailable, ProviderRejected):
            raise
        except BaseException as exc:
            run.abandon(type(exc).__name__)
            raise
        if completion is None:
            raise run.exhausted()
        return completion

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
                breaker = self._rules.breaker(scope, link)
                if circuit_open(run, link, breaker):
                    continue
                turn = EntryTurn(self._rules, run, index, breaker)
                asked = replace(request, model=link.entry.model)
                while (budget := turn.budget()) is not None:
                    span, started = run.start_attempt(link), time.perf_counter()
                    # The first token must come within the entry's turn too; after it, the
                    # answer has only the attempt's own budget (no failover is possible then).
                    clock = AttemptClock(
                        budget=budget,
                        first_token_timeout=min(
                            self.policy.first_token_timeout, turn.end - time.monotonic()
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
                        if await turn.retry(error):
                            continue
                        break
                    except BaseException:
                        turn.abandoned(span, started)
                        raise
                    finally:
                        with suppress(Exception):
                            await events.aclose()
                    turn.answered(span, done, started)
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
