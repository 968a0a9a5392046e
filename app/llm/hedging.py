"""A plain (non-streamed) answer through the chain, hedged when an entry is late.

A plain answer arrives whole: until it does, a long answer and a hung provider look the same.
So a plain attempt is not abandoned when it is slow; while another entry remains, an answer
not in `hedge_after` into the entry's turn starts the rest of the chain alongside it, and the
first answer wins. The late attempt that loses counts as a timeout towards its breaker's
failure rate (not its consecutive failures: it may have been a long answer), so a provider
that is late most of the time, a hung one, is soon skipped outright; a hedged attempt that
loses is merely cancelled.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from opentelemetry.trace import Span

from app.llm.breaker import CircuitBreaker
from app.llm.links import ChainLink
from app.llm.provider import Completion, CompletionRequest, ProviderError
from app.llm.rules import ChainRules, EntryTurn
from app.llm.run import ChainRun, as_provider_error, circuit_open
from app.tenancy.scope import TenantScope


async def complete_from(
    rules: ChainRules, run: ChainRun, start: int, request: CompletionRequest
) -> Completion | None:
    """The answer of the first entry from `start` on that gives one; None if none does."""
    for index in range(start, len(rules.links)):
        if run.remaining() <= 0:
            run.failover_reason = "deadline_exceeded"
            return None
        link = rules.links[index]
        breaker = rules.breaker(run.scope, link)
        if not circuit_open(run, link, breaker):
            return await _complete_entry(rules, run, index, request, breaker)
    return None


async def _complete_entry(
    rules: ChainRules,
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
    link = rules.links[index]
    asked = replace(request, model=link.entry.model)
    turn = EntryTurn(rules, run, index, breaker)
    last = index == len(rules.links) - 1
    hedge_at = None if last else min(time.monotonic() + rules.policy.hedge_after, turn.end)
    while (budget := turn.budget()) is not None:
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
            if await turn.retry(error):
                continue
            break
        except BaseException:
            turn.abandoned(span, started)
            raise
        if late is not None:
            return await _hedged(turn, request, late, span, started)
        turn.answered(span, completion, started)
        return completion
    return await complete_from(rules, run, index + 1, request)


async def _hedged(
    turn: EntryTurn,
    request: CompletionRequest,
    late: asyncio.Task[Completion],
    span: Span,
    started: float,
) -> Completion | None:
    """Race a late attempt of the turn's entry against the rest of the chain.

    The first answer wins and the other side is cancelled. A late attempt that loses
    counts as a late timeout for its breaker (a hung provider is cut off this way); the
    rest of the chain's cancelled attempts get no verdict. If the rest fails,
    the late attempt is still awaited; if the late attempt fails, the rest carries on.

    Raises:
        ProviderRejected: A provider refused the request itself.
    """
    rules, run, link = turn.rules, turn.run, turn.link
    run.span.add_event("hedge", {"gen_ai.request.model": link.entry.model})
    run.failover_reason = "hedge"
    rival = asyncio.ensure_future(complete_from(rules, run, turn.index + 1, request))
    settled = False
    try:
        await asyncio.wait({late, rival}, return_when=asyncio.FIRST_COMPLETED)
        if rival.done():
            answer = rival.result()
            if answer is not None:
                settled = True
                await _outrun(turn, late, span, started)
                return answer
            await asyncio.wait({late})
        settled = True
        try:
            completion = late.result()
        except (ProviderError, TimeoutError) as exc:
            error = as_provider_error(exc)
            run.failed(span, link, error, started)
            rules.verdict(run, link, error)
            run.fail_over(link, error.reason)
            return await rival
        await _cancel(rival)
        turn.answered(span, completion, started)
        return completion
    except BaseException:
        if not settled:
            await _cancel(late)
            turn.abandoned(span, started)
        raise
    finally:
        await _cancel(rival)


async def _outrun(
    turn: EntryTurn, late: asyncio.Task[Completion], span: Span, started: float
) -> None:
    """Close a late attempt that another entry beat to the answer."""
    rules, run, link = turn.rules, turn.run, turn.link
    if late.done() and not late.cancelled() and late.exception() is None:
        # It answered in the same instant: not late after all, but its answer is unused.
        turn.abandoned(span, started)
        return
    if late.done() and not late.cancelled():
        error = as_provider_error(late.exception() or TimeoutError())
        outrun = False
    else:
        await _cancel(late)
        error = ProviderError("another entry answered first; this one was late", reason="timeout")
        outrun = True
    run.failed(span, link, error, started)
    rules.judge(run, link, error, late=outrun)
    run.fail_over(link, error.reason)


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
