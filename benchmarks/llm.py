"""`python -m benchmarks.llm`: what the provider chain costs, measured against the emulator.

1. Router overhead: the same OpenAI Chat Completions call made N times directly through the
   provider (`OpenAIProvider.complete`: the official SDK on its aiohttp transport) and N times
   through `ProviderChain.complete` (key resolution from an in-memory resolver,
   breaker, retry bookkeeping, the SDK tracer provider recording the attempt and chain spans),
   interleaved so both see the same machine. Reported: p50 and p99 of each, and p50 added.
2. Failover after connection refused: a chain whose first entry's port refuses connections
   against a chain with only the healthy entry; p99 added. The breaker is set out of reach here
   so every request pays the refused connect (with the breaker, it would be skipped outright).
3. SDK client build for a tenant seen for the first time (or a rotated key): an `AsyncOpenAI`
   with its own connection pool (what Bulkhead built before `SdkClients`) against one from
   `SdkClients` over the shared pool.
4. Breaker open: a chain whose first entry always answers 503, N requests; calls the dead
   provider received before the circuit opened and after (counted by the emulator).
5. Router overhead with a fallback entry: as 1, through `[healthy, local]`: a plain attempt on
   an entry that is not the last runs as a task with a timed wait (the hedge timer).
6. A hung provider at the shipped timing defaults (`ChainPolicy()`): `[anthropic that never
   answers, healthy openai]`; as many concurrent requests as open the breaker, how long they
   took (the hedge delay), then as many again: how long those took and the calls the hung
   provider received meanwhile.

The emulator runs as its own process (in a thread it would compete for this process's GIL
and inflate both sides' tails); everything talks over loopback TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import openai
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from app.config import LlmSettings
from app.llm.breaker import BreakerPolicy, BreakerRegistry
from app.llm.chains import build_chain
from app.llm.clients import SdkClients
from app.llm.openai_chat import OpenAIProvider
from app.llm.provider import Completion, CompletionRequest, ContextChunk
from app.llm.router import ChainPolicy, ProviderChain
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import Role, TenantScope
from tests.provider_emulator import free_port, refused_url

KEY = "sk-bench-0123456789abcdef"
SCOPE = TenantScope(
    tenant_id="bench", subject="bench-user", roles=frozenset({Role.CHAT}), credential_id="c"
)
REQUEST = CompletionRequest(
    question="How much is the hotel limit?",
    context=(ContextChunk(1, "d", "c", "Travel", "Hotels: 180 euros per night.", 1.0),),
    model="",
)


class EmulatorProcess:
    """`tests/provider_emulator.py` in a subprocess on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(__file__).resolve().parents[1] / "tests" / "provider_emulator.py"
        self._process = subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
            [sys.executable, str(script), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.05)

    def calls(self, path: str) -> int:
        """Calls the emulator has counted on `path` since its last reset."""
        counts: dict[str, int] = httpx.get(f"{self.url}/_emulator/calls").json()
        return counts.get(path, 0)

    def reset(self) -> None:
        """Zero the emulator's counters."""
        httpx.post(f"{self.url}/_emulator/reset")

    def stop(self) -> None:
        """Terminate the subprocess."""
        self._process.terminate()
        self._process.wait(timeout=10)


class StaticKeys:
    """The key every entry uses, as a warm secret cache would hand it out."""

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        """The bench key."""
        return SecretValue(KEY)

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        """Nothing cached."""


REF = "tenants/bench/openai"
OPENAI_URL = "https://api.openai.com/v1"  # only built against, never called


def _entry(model: str, url: str) -> ChainEntry:
    return ChainEntry(provider="openai", model=model, secret=REF, base_url=url)


def _chain(entries: list[ChainEntry], breaker: BreakerPolicy) -> ProviderChain:
    settings = LlmSettings()
    chain = build_chain(
        tuple(entries), resolver=StaticKeys(), settings=settings, breakers=BreakerRegistry(breaker)
    )
    chain.policy = ChainPolicy(backoff_base=0.001, backoff_cap=0.002, breaker=breaker)
    return chain


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def overhead(
    emulator: EmulatorProcess, n: int, *, fallback: bool = False
) -> tuple[list[float], list[float]]:
    base = emulator.url + "/v1"
    entry = _entry("gpt-4o-mini", base)
    clients = SdkClients()
    # The baseline is the provider's own call (the official SDK on its aiohttp transport, the
    # answer decoded by msgspec), so the difference is what the router adds around it.
    provider = OpenAIProvider(
        entry, StaticKeys(), clients=clients, connect_timeout=2.0, max_output_tokens=1024
    )
    entries = [entry, ChainEntry(provider="local")] if fallback else [entry]
    chain = _chain(entries, BreakerPolicy())

    async def direct() -> object:
        return await provider.complete(REQUEST, scope=SCOPE, time_budget=30.0)

    async def routed() -> object:
        return await chain.complete(scope=SCOPE, request=REQUEST)

    for _ in range(50):  # warm both connection pools
        await direct()
        await routed()
    direct_times, routed_times = [], []
    for _ in range(n):
        direct_times.append(await _timed(direct))
        routed_times.append(await _timed(routed))
    await clients.aclose()
    await chain.aclose()
    return direct_times, routed_times


async def failover(
    emulator: EmulatorProcess, n: int, breaker: BreakerPolicy
) -> tuple[list[float], list[float], float]:
    base = emulator.url + "/v1"
    healthy = _chain([_entry("gpt-4o-mini", base)], breaker)
    refused = _chain([_entry("gpt-4o-mini", refused_url()), _entry("gpt-4o-mini", base)], breaker)
    for _ in range(50):
        await healthy.complete(scope=SCOPE, request=REQUEST)
        await refused.complete(scope=SCOPE, request=REQUEST)
    healthy_times, refused_times = [], []
    cpu = {"healthy": 0.0, "refused": 0.0}
    for _ in range(n):
        started = time.process_time()
        healthy_times.append(await _timed(lambda: healthy.complete(scope=SCOPE, request=REQUEST)))
        cpu["healthy"] += time.process_time() - started
        started = time.process_time()
        refused_times.append(await _timed(lambda: refused.complete(scope=SCOPE, request=REQUEST)))
        cpu["refused"] += time.process_time() - started
    await healthy.aclose()
    await refused.aclose()
    # This process's CPU per request: what the refused attempt costs us, whatever the machine's
    # load does to the wall-clock tail.
    added_cpu_ms = (cpu["refused"] - cpu["healthy"]) / n * 1000
    return healthy_times, refused_times, added_cpu_ms


async def client_build(n: int) -> tuple[list[float], list[float]]:
    own_pool, shared_pool = [], []
    clients = SdkClients(max_clients=n + 1)
    made: list[openai.AsyncOpenAI] = []
    for i in range(n):
        started = time.perf_counter()
        made.append(openai.AsyncOpenAI(api_key=f"{KEY}{i}", base_url=OPENAI_URL, max_retries=0))
        own_pool.append(time.perf_counter() - started)
        started = time.perf_counter()
        clients.openai(tenant_id=f"t{i}", base_url=OPENAI_URL, key=SecretValue(f"{KEY}{i}"))
        shared_pool.append(time.perf_counter() - started)
    for client in made:
        await client.close()
    await clients.aclose()
    return own_pool, shared_pool


async def breaker_open(emulator: EmulatorProcess, n: int) -> tuple[int, int, int]:
    path = "/v1/chat/completions"
    chain = _chain(
        [_entry("dead@503", emulator.url + "/v1"), ChainEntry(provider="local")],
        BreakerPolicy(consecutive_failures=5, open_seconds=300),
    )
    emulator.reset()
    answered_locally = 0
    before_open = -1
    for _ in range(n):
        completion = await chain.complete(scope=SCOPE, request=REQUEST)
        answered_locally += completion.provider == "local"
        breaker = chain.breaker_for(SCOPE, 0)
        if before_open < 0 and breaker is not None and breaker.state == "open":
            before_open = emulator.calls(path)
    after_open = emulator.calls(path) - before_open
    await chain.aclose()
    return before_open, after_open, answered_locally


async def hung_at_defaults(emulator: EmulatorProcess) -> tuple[float, float, int, int]:
    """Seconds the first wave took (max), the second wave (max), hung calls in each wave."""
    chain = build_chain(
        (
            ChainEntry(provider="anthropic", model="hung@hang", secret=REF, base_url=emulator.url),
            _entry("gpt-4o-mini", emulator.url + "/v1"),
        ),
        resolver=StaticKeys(),
        settings=LlmSettings(),
        breakers=BreakerRegistry(BreakerPolicy()),
    )
    # Plain calls beaten by the hedge count towards the breaker's failure rate.
    wave = max(BreakerPolicy().consecutive_failures, BreakerPolicy().min_calls)
    emulator.reset()

    async def ask() -> Completion:
        completion = await chain.complete(scope=SCOPE, request=REQUEST)
        if completion.provider != "openai":
            raise RuntimeError(f"answered by {completion.provider}, not the healthy entry")
        return completion

    first = await asyncio.gather(*(_timed(ask) for _ in range(wave)))
    hung_first = emulator.calls("/v1/messages")
    second = await asyncio.gather(*(_timed(ask) for _ in range(wave)))
    hung_second = emulator.calls("/v1/messages") - hung_first
    await chain.aclose()
    return max(first), max(second), hung_first, hung_second


async def run(n: int) -> int:
    trace.set_tracer_provider(TracerProvider())  # spans are recorded, not exported
    emulator = EmulatorProcess()
    try:
        direct, routed = await overhead(emulator, n)
        direct_f, routed_f = await overhead(emulator, n, fallback=True)
        unreachable = BreakerPolicy(consecutive_failures=10**9, min_calls=10**9)
        healthy, refused, added_cpu = await failover(emulator, n, unreachable)
        healthy_b, refused_b, _ = await failover(emulator, n, BreakerPolicy())
        before, after, local = await breaker_open(emulator, n)
        own_pool, shared_pool = await client_build(min(n, 200))
        hung_first, hung_second, hung_calls, hung_after = await hung_at_defaults(emulator)
    finally:
        emulator.stop()
    added_p50 = _pct(routed, 0.5) - _pct(direct, 0.5)
    added_p99 = _pct(refused, 0.99) - _pct(healthy, 0.99)
    print(f"router overhead (n={n}, sequential, loopback emulator):")
    print(f"  provider     p50 {_pct(direct, 0.5):7.3f} ms  p99 {_pct(direct, 0.99):7.3f} ms")
    print(f"  via router   p50 {_pct(routed, 0.5):7.3f} ms  p99 {_pct(routed, 0.99):7.3f} ms")
    print(f"  added        p50 {added_p50:7.3f} ms  (target <= 1 ms)")
    added_f = _pct(routed_f, 0.5) - _pct(direct_f, 0.5)
    print("  with a fallback entry after it (the hedge timer armed):")
    print(f"  provider     p50 {_pct(direct_f, 0.5):7.3f} ms  p99 {_pct(direct_f, 0.99):7.3f} ms")
    print(f"  via router   p50 {_pct(routed_f, 0.5):7.3f} ms  p99 {_pct(routed_f, 0.99):7.3f} ms")
    print(f"  added        p50 {added_f:7.3f} ms  (target <= 1 ms)")
    print("failover after connection refused:")
    print(f"  healthy only p50 {_pct(healthy, 0.5):7.3f} ms  p99 {_pct(healthy, 0.99):7.3f} ms")
    print(f"  refused+ok   p50 {_pct(refused, 0.5):7.3f} ms  p99 {_pct(refused, 0.99):7.3f} ms")
    print(f"  added        p99 {added_p99:7.3f} ms  (target <= 5 ms)")
    mean_added = (statistics.mean(refused) - statistics.mean(healthy)) * 1000
    print(f"  added       mean {mean_added:7.3f} ms  (breaker out of reach: every request refused)")
    added_b = _pct(refused_b, 0.99) - _pct(healthy_b, 0.99)
    print(f"  added        p99 {added_b:7.3f} ms  (default breaker: the dead entry is skipped)")
    print(f"  added CPU   mean {added_cpu:7.3f} ms  (this process, breaker out of reach)")
    print(f"SDK client for a new tenant or key (n={len(own_pool)}):")
    print(f"  own pool     p50 {_pct(own_pool, 0.5):7.3f} ms  p99 {_pct(own_pool, 0.99):7.3f} ms")
    print(
        f"  SdkClients   p50 {_pct(shared_pool, 0.5):7.3f} ms"
        f"  p99 {_pct(shared_pool, 0.99):7.3f} ms  (shared pool)"
    )
    print(f"breaker open ({n} requests, dead provider answers 503):")
    print(f"  calls to the dead provider before the circuit opened: {before}")
    print(f"  calls to the dead provider after it opened:           {after}  (target 0)")
    print(f"  requests answered by the local fallback:              {local}/{n}")
    defaults = ChainPolicy()
    print(
        f"hung provider at the shipped defaults (hedge after {defaults.hedge_after:g} s;"
        f" late calls open the breaker from {BreakerPolicy().min_calls} calls on):"
    )
    print(f"  first wave, concurrent:  slowest answer {hung_first:6.3f} s, hung calls {hung_calls}")
    print(
        f"  second wave, concurrent: slowest answer {hung_second * 1000:6.1f} ms,"
        f" hung calls {hung_after}  (target 0)"
    )
    ok = (
        added_p50 <= 1.0
        and added_f <= 1.0
        and added_p99 <= 5.0
        and after == 0
        and hung_after == 0
        and hung_first < 15
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Provider chain benchmarks")
    parser.add_argument("-n", type=int, default=1000, help="requests per measurement")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.n))


if __name__ == "__main__":
    sys.exit(main())
