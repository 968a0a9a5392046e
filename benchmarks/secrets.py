"""`python -m benchmarks.secrets`: secret cache and OpenBao figures (issue 4's targets).

- cached get: `SecretCache.get` of a warm entry (target p99 <= 5 us);
- cold get: `VaultSecretsBackend.get` against a real `bao server -dev` on loopback
  (target p99 <= 5 ms), each call a full KV v2 read (one GET on the backend's keep-alive
  `httpx.AsyncClient`, on the event loop); the same read through hvac in a worker thread (how
  Bulkhead read before) is reported next to it;
- single flight: 100 concurrent misses for one ref (target: exactly 1 backend call).

The same KV read made with a bare keep-alive HTTP client is reported as the server's floor,
so Bulkhead's own overhead can be told from the server's and the machine's (on a 2-core box
shared with other work, the floor's tail moves a lot). The three reads are interleaved, so
they see the same machine; `cold_get_p99_over_floor` is the ratio to compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from app.config import VaultSettings
from app.secrets.cache import SecretCache
from app.secrets.values import SecretRef, SecretValue
from app.secrets.vault import VaultSecretsBackend
from app.tenancy.scope import TenantScope
from tests.servers import openbao_dev_server

SCOPE = TenantScope(tenant_id="bench", subject="bench", roles=frozenset())
REF = SecretRef.parse("tenants/bench/openai")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Floor:
    """The same read with a bare keep-alive HTTP client: no hvac, no thread, no token logic."""

    def __init__(self, addr: str, token: str) -> None:
        self._http = httpx.Client(headers={"X-Vault-Token": token})
        self._url = f"{addr}/v1/secret/data/{REF}"

    async def read(self) -> None:
        self._http.get(self._url).json()

    def close(self) -> None:
        self._http.close()


async def _timed_ms(call: Callable[[], Awaitable[object]], into: list[float]) -> None:
    start = time.perf_counter_ns()
    await call()
    into.append((time.perf_counter_ns() - start) / 1e6)


async def _run(cached_n: int, cold_n: int) -> dict[str, float | int]:
    with openbao_dev_server() as bao:
        backend = VaultSecretsBackend(VaultSettings(addr=bao.addr, token=bao.root_token))
        try:
            await backend.put(REF, SecretValue("sk-bench-0123456789abcdef"), scope=SCOPE)

            # Single flight first, on a cold cache.
            flight = SecretCache(backend, ttl_seconds=60)
            await asyncio.gather(*(flight.get(REF, scope=SCOPE) for _ in range(100)))
            single_flight_calls = flight.backend_calls

            # Cold gets: straight to OpenBao, interleaved with the hvac-in-a-thread read and
            # the floor, after a short warm-up of each one's HTTP connection.
            floor = _Floor(bao.addr, bao.root_token)

            async def ours() -> object:
                return await backend.get(REF, scope=SCOPE)

            async def hvac_thread() -> object:
                return await backend.connection.call(
                    lambda c: c.secrets.kv.v2.read_secret_version(
                        path=str(REF), mount_point="secret", raise_on_deleted_version=True
                    )
                )

            for _ in range(20):
                await ours()
                await hvac_thread()
                await floor.read()
            cold: list[float] = []
            threaded: list[float] = []
            bare: list[float] = []
            for _ in range(cold_n):
                await _timed_ms(ours, cold)
                await _timed_ms(hvac_thread, threaded)
                await _timed_ms(floor.read, bare)
            floor.close()

            # Cached gets.
            cache = SecretCache(backend, ttl_seconds=3600)
            await cache.get(REF, scope=SCOPE)
            cached: list[float] = []
            for _ in range(cached_n):
                start = time.perf_counter_ns()
                await cache.get(REF, scope=SCOPE)
                cached.append((time.perf_counter_ns() - start) / 1e3)
        finally:
            await backend.close()
    return {
        "cached_get_p50_us": round(statistics.median(cached), 2),
        "cached_get_p99_us": round(_percentile(cached, 0.99), 2),
        "cold_get_openbao_p50_ms": round(statistics.median(cold), 3),
        "cold_get_openbao_p99_ms": round(_percentile(cold, 0.99), 3),
        "hvac_thread_p50_ms": round(statistics.median(threaded), 3),
        "hvac_thread_p99_ms": round(_percentile(threaded, 0.99), 3),
        "floor_bare_http_p50_ms": round(statistics.median(bare), 3),
        "floor_bare_http_p99_ms": round(_percentile(bare, 0.99), 3),
        "cold_get_p50_added_to_floor_ms": round(
            statistics.median(cold) - statistics.median(bare), 3
        ),
        "cold_get_p99_over_floor": round(_percentile(cold, 0.99) / _percentile(bare, 0.99), 2),
        "single_flight_backend_calls_for_100_misses": single_flight_calls,
        "cached_samples": cached_n,
        "cold_samples": cold_n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.secrets", description=__doc__)
    parser.add_argument("--cached", type=int, default=200_000, help="cached gets to time")
    parser.add_argument("--cold", type=int, default=2_000, help="cold OpenBao gets to time")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    result = runner(_run(args.cached, args.cold))
    if args.json:
        print(json.dumps(result))
        return 0
    targets = {
        "cached_get_p99_us": ("<=", 5.0),
        "cold_get_openbao_p99_ms": ("<=", 5.0),
        "single_flight_backend_calls_for_100_misses": ("==", 1),
    }
    failed = False
    for key, value in result.items():
        verdict = ""
        if key in targets:
            op, bound = targets[key]
            ok = value <= bound if op == "<=" else value == bound
            failed |= not ok
            verdict = f"  (target {op} {bound}: {'ok' if ok else 'MISSED'})"
        print(f"{key:45} {value}{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
