"""`python -m benchmarks.guard`: what the limiter, the audit chain and redaction cost.

Each figure comes with its baseline from the same run, on the same database:
- audit append: the hash-chained `AuditWriter._write` (advisory lock + head read + insert)
  against the plain batched INSERT it replaced, one writer and two concurrent writers (two
  pools, as two replicas) on one tenant;
- rate-limit check: `PostgresCounters.hit` with 3 buckets against a bare `SELECT 1` round
  trip, 16 callers at once; the Redis store against a bare PING when `redis-server` exists;
- redaction: `redact_fields` over a chat request (question + 5 chunks of ~800 characters),
  all three kinds, against the same request with redaction off.

Embedded Postgres in a temp dir unless `--database-url` names a server (a fresh database is
created on it). Loopback only; bounded by `--ops` per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from app.audit.writer import AuditRow, AuditWriter
from app.config import Settings
from app.db.migrate import upgrade
from app.db.pool import create_pool, tenant_transaction
from app.db.urls import with_user
from app.limits.store import PostgresCounters, RedisCounters
from app.llm.provider import CompletionRequest, ContextChunk
from app.privacy.redact import parse_kinds, redact_fields
from app.secrets.kek import load_master_key
from app.tenancy.scope import TenantScope
from benchmarks.stack import onboard, postgres
from tests.servers import find_redis_server, redis_server

APP_ROLE = "bulkhead_app"
TENANT = "bench-guard"
CALLER = TenantScope(tenant_id=TENANT, subject="bench", roles=frozenset())
PLAIN_INSERT = """
    INSERT INTO audit_events (tenant_id, occurred_at, principal, credential_id, method, route,
        status, latency_ms, source_ip, trace_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
    }


def _row(n: int) -> AuditRow:
    return AuditRow(
        tenant_id=TENANT,
        occurred_at=datetime.now(UTC),
        principal=f"user-{n % 50}",
        credential_id="jwt:bench",
        method="POST",
        route="/v1/chat",
        status=200,
        latency_ms=3.5,
        source_ip="10.0.0.1",
        trace_id=f"{n:032x}",
    )


async def _timed(op: Callable[[], Awaitable[Any]], count: int, callers: int) -> list[float]:
    samples: list[float] = []
    remaining = count

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await op()
            samples.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return samples


async def _plain_batch(pool: asyncpg.Pool, batch: list[AuditRow]) -> None:
    async with tenant_transaction(pool, scope=CALLER) as connection:
        await connection.executemany(
            PLAIN_INSERT,
            [
                (r.tenant_id, r.occurred_at, r.principal, r.credential_id, r.method, r.route,
                 r.status, r.latency_ms, r.source_ip, r.trace_id)
                for r in batch
            ],
        )  # fmt: skip


async def _append(
    kind: str, pool: asyncpg.Pool, writer: AuditWriter, rows: list[AuditRow], batches: int
) -> list[float]:
    samples = []
    for _ in range(batches):
        started = time.perf_counter()
        if kind == "plain":
            await _plain_batch(pool, rows)
        else:
            await writer._write(rows)
        samples.append(time.perf_counter() - started)
    return samples


async def _audit(app_url: str, ops: int) -> dict[str, Any]:
    pools = [await create_pool(app_url, min_size=1, max_size=2) for _ in range(2)]
    writers = [AuditWriter(p, buffer_size=10, batch_size=10, flush_interval=1) for p in pools]
    results: dict[str, Any] = {}
    try:
        for batch_size in (1, 50):
            rows = [_row(i) for i in range(batch_size)]
            batches = max(20, ops // batch_size)
            for writers_n in (1, 2):
                entry: dict[str, Any] = {}
                for kind in ("plain", "chained"):
                    started = time.perf_counter()
                    parts = await asyncio.gather(
                        *(
                            _append(kind, pools[i], writers[i], rows, batches // writers_n)
                            for i in range(writers_n)
                        )
                    )
                    elapsed = time.perf_counter() - started
                    samples = [s for part in parts for s in part]
                    entry[kind] = _ms(samples) | {
                        "rows_per_s": round(len(samples) * batch_size / elapsed)
                    }
                results[f"batch {batch_size}, {writers_n} writer(s)"] = entry
    finally:
        for pool in pools:
            await pool.close()
    return results


async def _limiter(app_url: str, ops: int, redis_url: str | None) -> dict[str, Any]:
    pool = await create_pool(app_url, min_size=4, max_size=16)
    results: dict[str, Any] = {}
    keys = ["key:k1", "tenant", "user:u1"]
    try:
        counters = PostgresCounters(pool)
        results["postgres SELECT 1 (baseline)"] = _ms(
            await _timed(lambda: pool.fetchval("SELECT 1"), ops, 16)
        )
        results["postgres hit, 3 buckets"] = _ms(
            await _timed(lambda: counters.hit(CALLER, keys, with_tokens=True), ops, 16)
        )
        if redis_url:
            client = Redis.from_url(redis_url)
            store = RedisCounters.from_url(redis_url, pool)
            results["redis PING (baseline)"] = _ms(await _timed(client.ping, ops, 16))
            results["redis hit, 3 buckets"] = _ms(
                await _timed(lambda: store.hit(CALLER, keys, with_tokens=False), ops, 16)
            )
            results["redis hit + token read"] = _ms(
                await _timed(lambda: store.hit(CALLER, keys, with_tokens=True), ops, 16)
            )
            await client.aclose()
            await store.aclose()
        else:
            results["redis"] = "skipped: redis-server not installed"
    finally:
        await pool.close()
    return results


def _redaction(ops: int) -> dict[str, Any]:
    text = (
        "Travel policy. Hotel stays are reimbursed up to 180 euros per night; meals up to 40"
        " euros per day. Submit receipts within 30 days through the expenses portal. "
    ) * 5
    request = CompletionRequest(
        question="How much is the hotel limit per night? My card is 4111 1111 1111 1111.",
        context=tuple(
            ContextChunk(i, f"doc-{i}", f"chunk-{i}", "Travel", text[:800], 0.5) for i in range(5)
        ),
        model="gpt-4o-mini",
    )
    kinds = parse_kinds(["credentials", "email", "credit_card"])
    results = {}
    for label, chosen in (("off (baseline)", frozenset()), ("all kinds", kinds)):
        samples = []
        for _ in range(ops):
            started = time.perf_counter()
            redact_fields(request, chosen)
            samples.append(time.perf_counter() - started)
        results[label] = {
            "p50_us": round(statistics.median(samples) * 1e6, 1),
            "p99_us": round(sorted(samples)[int(0.99 * len(samples))] * 1e6, 1),
        }
    return results


async def _run(owner_url: str, ops: int, redis_url: str | None, kek: bytes) -> dict[str, Any]:
    await onboard(owner_url, [TENANT], kek=kek)
    app_url = with_user(owner_url, APP_ROLE)
    return {
        "audit_append": await _audit(app_url, ops),
        "rate_limit_check": await _limiter(app_url, ops, redis_url),
        "redaction": _redaction(ops),
    }


def main() -> int:
    """Run every measurement and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--database-url", default=None, help="Postgres server (owner URL)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bulkhead-bench-guard-") as workdir,
        postgres(Path(workdir), server_url=args.database_url) as owner_url,
    ):
        upgrade(owner_url, app_role=APP_ROLE)
        kek = load_master_key(Settings(dev=True, data_dir=Path(workdir)))
        binary = find_redis_server()
        if binary:
            with redis_server(binary) as redis_url:
                report = asyncio.run(_run(owner_url, args.ops, redis_url, kek))
        else:
            report = asyncio.run(_run(owner_url, args.ops, None, kek))
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
