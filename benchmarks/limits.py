"""`python -m benchmarks.limits`: what admitting one request costs, local vs exact admission.

`RequestLimiter.admit` as the rate-limit middleware calls it (registry lookup, 3 buckets: the
tenant, the user and the API key, the decision and its headers), `--callers` at once, for a
tenant in each admission mode, on each store: Postgres, and Redis when `redis-server` exists.
Per mode: latency per admission (p50/p99), this process's CPU per admission (the background
syncs included), the store's own CPU per admission (Postgres: this run's backends, read from
/proc, so the server must run on this machine; Redis: `INFO cpu`), and store round trips per
1,000 admissions. Ratios are exact / local.

Embedded Postgres in a temp dir unless `--database-url` names a server (a fresh database is
created on it). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import asyncpg
import msgspec
from redis.asyncio import Redis

from app.config import Settings
from app.db.migrate import upgrade
from app.db.pool import connect, create_pool
from app.db.registry import TenantRegistry
from app.db.urls import with_user
from app.lifecycle.apply import apply_manifest
from app.limits.middleware import RequestLimiter
from app.limits.store import CounterStore, PostgresCounters, RedisCounters, SyncAnswer
from app.secrets.kek import load_master_key
from app.tenancy.manifest import LimitsSpec
from app.tenancy.scope import TenantScope
from benchmarks.stack import bench_manifest, postgres
from tests.servers import find_redis_server, redis_server

APP_ROLE = "bulkhead_app"
SYNC_INTERVAL = 0.25
HUGE = 1_000_000_000
Mode = Literal["local", "exact"]


class CountingStore:
    """A store that counts the round trips it makes (the benchmark's instrument, not a fake)."""

    def __init__(self, store: CounterStore) -> None:
        self.store = store
        self.round_trips = 0

    async def hit(self, scope: TenantScope, keys: list[str], *, with_tokens: bool) -> Any:
        """The store's `hit`, counted."""
        self.round_trips += 1
        return await self.store.hit(scope, keys, with_tokens=with_tokens)

    async def sync(self, pushes: Any, tokens_for: Any) -> SyncAnswer:
        """The store's `sync`, counted."""
        self.round_trips += 1
        answer: SyncAnswer = await self.store.sync(pushes, tokens_for)
        return answer

    async def aclose(self) -> None:
        """Close the store."""
        await self.store.aclose()


def _tenant(mode: Mode) -> str:
    return f"bench-limits-{mode}"


async def _onboard(owner_url: str, kek: bytes) -> None:
    connection = await connect(owner_url)
    try:
        for mode in ("local", "exact"):
            limits = LimitsSpec(
                requests_per_minute=HUGE,
                tokens_per_day=HUGE,
                requests_per_minute_per_user=HUGE,
                requests_per_minute_per_key=HUGE,
                admission=mode,
            )
            manifest = msgspec.structs.replace(bench_manifest(_tenant(mode)), limits=limits)
            await apply_manifest(connection, manifest, kek=kek)
    finally:
        await connection.close()


async def _postgres_cpu(pool: asyncpg.Pool) -> float | None:
    """CPU seconds used so far by this database's runtime-role backends (None: not local)."""
    pids = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND usename = $1",
        APP_ROLE,
    )
    return _proc_cpu([row["pid"] for row in pids])


def _proc_cpu(pids: list[int]) -> float | None:
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


async def _redis_cpu(url: str) -> float:
    client = Redis.from_url(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _run_mode(
    limiter: RequestLimiter,
    counting: CountingStore,
    mode: Mode,
    ops: int,
    callers: int,
    server_cpu: Callable[[], Awaitable[float | None]],
) -> dict[str, Any]:
    scope = TenantScope(
        tenant_id=_tenant(mode), subject="bench", roles=frozenset(), credential_id="apikey:k1"
    )
    for _ in range(200):  # warm-up: connections open, scripts loaded, views created
        await limiter.admit(scope, spends_tokens=True)
    await limiter.sync_now()
    samples: list[float] = []
    remaining = ops

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await limiter.admit(scope, spends_tokens=True)
            samples.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # local admission never yields: let the other callers in

    trips, server_before = counting.round_trips, await server_cpu()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    await limiter.sync_now()  # the last counts too: their push is part of the cost
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server_after = await server_cpu()
    ordered = sorted(samples)
    server = (
        round((server_after - server_before) / ops * 1e6, 2)
        if server_after is not None and server_before is not None
        else None
    )
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e6, 1),
        "cpu_us_per_request": round(cpu / ops * 1e6, 2),
        "store_cpu_us_per_request": server,
        "round_trips_per_1000": round((counting.round_trips - trips) / ops * 1000, 2),
        "requests_per_s": round(ops / wall),
    }


async def _store(
    name: str,
    store: CounterStore,
    pool: asyncpg.Pool,
    ops: int,
    callers: int,
    server_cpu: Callable[[], Awaitable[float | None]],
) -> dict[str, Any]:
    registry = TenantRegistry(pool)
    await registry.load()
    counting = CountingStore(store)
    limiter = RequestLimiter(counting, registry, sync_interval=SYNC_INTERVAL)
    limiter.start()
    try:
        exact = await _run_mode(limiter, counting, "exact", ops, callers, server_cpu)
        local = await _run_mode(limiter, counting, "local", ops, callers, server_cpu)
    finally:
        await limiter.aclose()
    ratios: dict[str, float | None] = {
        "cpu": round(exact["cpu_us_per_request"] / local["cpu_us_per_request"], 1),
        "p50": round(exact["p50_us"] / local["p50_us"], 1),
        "p99": round(exact["p99_us"] / local["p99_us"], 1),
    }
    if exact["store_cpu_us_per_request"] and local["store_cpu_us_per_request"]:
        ratios["store_cpu"] = round(
            exact["store_cpu_us_per_request"] / local["store_cpu_us_per_request"], 1
        )
    return {"store": name, "exact": exact, "local": local, "exact_over_local": ratios}


async def _run(app_url: str, redis_url: str | None, ops: int, callers: int) -> dict[str, Any]:
    pool = await create_pool(app_url, min_size=callers, max_size=callers)
    report: dict[str, Any] = {"callers": callers, "ops": ops}
    try:
        report["postgres"] = await _store(
            "postgres", PostgresCounters(pool), pool, ops, callers, lambda: _postgres_cpu(pool)
        )
        if redis_url:

            async def redis_cpu() -> float | None:
                return await _redis_cpu(redis_url)

            report["redis"] = await _store(
                "redis", RedisCounters.from_url(redis_url, pool), pool, ops, callers, redis_cpu
            )
        else:
            report["redis"] = "skipped: redis-server not installed"
    finally:
        await pool.close()
    return report


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['callers']} caller(s)",
        f"{'store':9} {'mode':6} {'p50 us':>8} {'p99 us':>8} {'cpu us':>8} {'store us':>9}"
        f" {'trips/1k':>9} {'req/s':>8}",
    ]
    for name in ("postgres", "redis"):
        entry = report.get(name)
        if not isinstance(entry, dict):
            continue
        for mode in ("exact", "local"):
            m = entry[mode]
            store_cpu = m["store_cpu_us_per_request"]
            if store_cpu == 0:  # /proc counts 10 ms ticks: below one tick in the whole run
                store_cpu = f"<{10_000 / report['ops']:.1f}"
            lines.append(
                f"{name:9} {mode:6} {m['p50_us']:8} {m['p99_us']:8} {m['cpu_us_per_request']:8}"
                f" {store_cpu if store_cpu is not None else '-':>9}"
                f" {m['round_trips_per_1000']:9} {m['requests_per_s']:8}"
            )
        lines.append(f"{name:9} exact/local: {entry['exact_over_local']}")
    return "\n".join(lines)


def main() -> int:
    """Measure both modes on both stores and print a table, then JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="admissions per measurement")
    parser.add_argument(
        "--callers", default="1,16", help="concurrent callers, one run per value (1,16)"
    )
    parser.add_argument("--database-url", default=None, help="Postgres server (owner URL)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bulkhead-bench-limits-") as workdir,
        postgres(Path(workdir), server_url=args.database_url) as owner_url,
    ):
        upgrade(owner_url, app_role=APP_ROLE)
        kek = load_master_key(Settings(dev=True, data_dir=Path(workdir)))
        asyncio.run(_onboard(owner_url, kek))
        app_url = with_user(owner_url, APP_ROLE)
        binary = find_redis_server()
        with redis_server(binary) if binary else contextlib.nullcontext() as redis_url:
            runs = [
                asyncio.run(_run(app_url, redis_url, args.ops, int(callers)))
                for callers in args.callers.split(",")
            ]
    for run in runs:
        sys.stdout.write(_table(run) + "\n")
    report = {"ops": args.ops, "sync_interval_s": SYNC_INTERVAL, "runs": runs}
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
