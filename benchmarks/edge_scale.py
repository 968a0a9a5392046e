"""In-process Qdrant Edge at scale: BM25 ingestion rate, filtered vs unfiltered top-10, RSS.

    python -m benchmarks.edge_scale --chunks 1000000 --tenants 1000     # `make bench-1m`
    python -m benchmarks.edge_scale --chunks 100000 --tenants 100       # a quicker look

1. The seeded synthetic corpus (`benchmarks/corpus.py`) is written through `EdgeIndex.upsert`
   (BM25 embedding and indexing, the ingestion path) in batches of 1,000; the rate counts only
   time inside `upsert`, not text generation. Tenant-private statistics add nothing here: they
   are counted at query time from the stored points (`scoping.statistics_corpus`).
2. The shard is closed and reopened as the service opens it (one search thread), and the
   process's resident memory is read before opening (the baseline: Python, the libraries) and
   after opening, and again after the queries.
3. Top-10 BM25 queries are timed one at a time on one thread, three ways per query, the order
   rotating so that none always runs on a warmer cache: *filtered* is the service's search
   (`EdgeIndex.search`: forced tenant and ACL filter, BM25 statistics counted over the caller's
   readable chunks, payload of the hit fields) for a random tenant; *shard-wide IDF* is the
   search as it was before statistics were made tenant-private (the same filter, gate, payload
   and hit conversion, IDF over the whole shard): the baseline of the same run; *unfiltered* is
   the same query and payload over the whole shard, with no filter, straight to the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import BM25_VECTOR, EdgeIndex, edge_filter
from app.vectors.index import Hit
from app.vectors.scoping import forced_condition, hit_from_payload
from benchmarks.corpus import Vocabulary, chunk_quota, load_corpus, tenant_ids
from benchmarks.report import RESULTS_DIR

P99_TARGET_MS = 5.0
INGEST_TARGET = 5_000
HIT_FIELDS = ["document_id", "title", "section", "text", "metadata"]
VARIANTS = ("filtered", "shard_wide_idf", "unfiltered")
LARGE_TENANT = "bench-large"


def rss_mib() -> float:
    """This process's resident memory (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


async def shard_wide_search(index: EdgeIndex, scope: TenantScope, query: str) -> list[Hit]:
    """`EdgeIndex.search` (BM25) as it was with shard-wide IDF: the baseline of the same run."""
    request = qe.QueryRequest(
        limit=10,
        query=qe.Query.Nearest(index._bm25.embed_query(query), using=BM25_VECTOR),
        filter=edge_filter(forced_condition(scope, reading=True)),
        with_payload=HIT_FIELDS,
    )
    async with index._gate.reading():
        points = index._shard.query(request)
    return [
        hit
        for point in points
        if (hit := hit_from_payload(str(point.id), float(point.score), point.payload)) is not None
    ]


async def time_queries(
    index: EdgeIndex, vocabulary: Vocabulary, tenants: list[str], queries: int, seed: int
) -> tuple[dict[str, dict[str, float]], float]:
    """Per variant (`VARIANTS`): latency percentiles and mean CPU time; mean filtered hits.

    CPU time (`time.process_time`, the process's; the engine searches on one thread) is what a
    search costs whatever else runs on the machine; latency includes waiting for a core.
    """
    rng = random.Random(seed)
    shard = index._shard
    bm25 = qe.Bm25()
    samples: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    cpu: dict[str, float] = dict.fromkeys(VARIANTS, 0.0)
    hits = 0
    for n in range(queries):
        text = vocabulary.query(rng)
        scope = TenantScope(
            tenant_id=rng.choice(tenants), subject="bench", roles=frozenset({Role.SEARCH})
        )
        # Rotate which goes first so none always runs on a warmer cache.
        for variant in VARIANTS[n % 3 :] + VARIANTS[: n % 3]:
            cpu_started = time.process_time()
            started = time.perf_counter()
            if variant == "filtered":
                found = await index.search(scope=scope, query=text, top_k=10)
                hits += len(found)
            elif variant == "shard_wide_idf":
                await shard_wide_search(index, scope, text)
            else:
                shard.query(
                    qe.QueryRequest(
                        limit=10,
                        query=qe.Query.Nearest(bm25.embed_query(text), using=BM25_VECTOR),
                        with_payload=HIT_FIELDS,
                    )
                )
            samples[variant].append(time.perf_counter() - started)
            cpu[variant] += time.process_time() - cpu_started
    timed = {
        variant: {**percentiles(samples[variant]), "cpu_mean_ms": cpu[variant] / queries * 1000}
        for variant in VARIANTS
    }
    return timed, hits / queries


async def _large_tenant(
    index: EdgeIndex, vocabulary: Vocabulary, args: argparse.Namespace
) -> dict[str, Any] | None:
    """The same timings for the one large tenant (`--large-tenant`), if there is one."""
    if not args.large_tenant:
        return None
    queries = max(1, args.queries // 10)
    print(f"timing {queries:,} queries of {LARGE_TENANT} ({args.large_tenant:,} chunks)")
    await time_queries(index, vocabulary, [LARGE_TENANT], min(50, queries), seed=5)
    timed, _ = await time_queries(index, vocabulary, [LARGE_TENANT], queries, seed=6)
    return {"chunks": args.large_tenant, "queries": queries, **timed}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    vocabulary = Vocabulary()
    tenants = tenant_ids(args.tenants)
    quotas = dict(zip(tenants, chunk_quota(args.chunks, args.tenants), strict=True))
    if args.large_tenant:
        quotas[LARGE_TENANT] = args.large_tenant
    path = workdir / "shard"
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    rss_start = rss_mib()
    print(f"loading {args.chunks:,} chunks across {args.tenants:,} tenants into {path}")
    stats = await load_corpus(path, vocabulary, quotas, progress=print)
    rss_after_load = rss_mib()
    index = EdgeIndex.open(path, search_threads=1)
    try:
        rss_open = rss_mib()
        segments = index._shard.info().segments_count
        print(f"timing {args.queries:,} top-10 queries, each {', '.join(VARIANTS)}")
        await time_queries(index, vocabulary, tenants, min(200, args.queries), seed=1)  # warm-up
        timed, mean_hits = await time_queries(index, vocabulary, tenants, args.queries, seed=2)
        rss_searched = rss_mib()
        large = await _large_tenant(index, vocabulary, args)
        optimized = await _optimized(index, vocabulary, tenants, args) if args.optimize else None
    finally:
        await index.close()
    return {
        "benchmark": "edge_scale",
        "timestamp": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "chunks": stats.chunks,
        "tenants": args.tenants,
        "ingest": {
            "chunks_per_second": round(stats.chunks_per_second),
            "chunks_per_cpu_second": round(stats.chunks_per_cpu_second),
            "upsert_seconds": round(stats.upsert_seconds, 1),
            "wall_seconds": round(stats.wall_seconds, 1),
            "close_seconds": round(stats.close_seconds, 1),
            "target": INGEST_TARGET,
        },
        "search": {
            "queries": args.queries,
            **timed,
            "filtered_over_shard_wide_p50": (
                timed["filtered"]["p50_ms"] / timed["shard_wide_idf"]["p50_ms"]
            ),
            "filtered_over_shard_wide_p99": (
                timed["filtered"]["p99_ms"] / timed["shard_wide_idf"]["p99_ms"]
            ),
            "filtered_over_unfiltered_p50": (
                timed["filtered"]["p50_ms"] / timed["unfiltered"]["p50_ms"]
            ),
            "filtered_over_unfiltered_p99": (
                timed["filtered"]["p99_ms"] / timed["unfiltered"]["p99_ms"]
            ),
            "mean_filtered_hits": mean_hits,
            "p99_target_ms": P99_TARGET_MS,
            "segments": segments,
        },
        "large_tenant": large,
        "after_optimize": optimized,
        "rss_mib": {
            "process_start": round(rss_start),
            "after_load_and_close": round(rss_after_load),
            "shard_open": round(rss_open),
            "after_queries": round(rss_searched),
        },
        "disk_mib": round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20),
    }


async def _optimized(
    index: EdgeIndex, vocabulary: Vocabulary, tenants: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Run the engine's optimizers (the service never does), then time the queries again."""
    shard = index._shard
    print("optimizing segments")
    started = time.perf_counter()
    shard.optimize()
    seconds = time.perf_counter() - started
    await time_queries(index, vocabulary, tenants, min(200, args.queries), seed=3)
    timed, _ = await time_queries(index, vocabulary, tenants, args.queries, seed=4)
    return {
        "optimize_seconds": round(seconds, 1),
        "segments": shard.info().segments_count,
        **timed,
        "rss_mib": round(rss_mib()),
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _latency(label: str, timed: dict[str, float]) -> str:
    return (
        f"{label:<22} p50 {timed['p50_ms']:.2f} ms  p95 {timed['p95_ms']:.2f} ms"
        f"  p99 {timed['p99_ms']:.2f} ms  max {timed['max_ms']:.2f} ms"
        f"  CPU {timed['cpu_mean_ms']:.2f} ms"
    )


def report(record: dict[str, Any]) -> str:
    """A short human summary of `record`, with each target met or missed."""
    ingest, search, rss = record["ingest"], record["search"], record["rss_mib"]
    filtered, baseline = search["filtered"], search["shard_wide_idf"]
    rate = ingest["chunks_per_second"]
    machine = record["machine"]
    return "\n".join(
        [
            f"chunks {record['chunks']:,} across {record['tenants']:,} tenants;"
            f" {machine['cpus']} CPUs, load average {machine['load_average_at_start']} at start,"
            f" {machine['load_average_at_end']} at end",
            f"BM25 ingestion: {rate:,} chunks/s"
            f" (target >= {INGEST_TARGET:,}: {_verdict(rate >= INGEST_TARGET)}),"
            f" {ingest['chunks_per_cpu_second']:,} per CPU-second;"
            f" wall {ingest['wall_seconds']} s incl. text generation",
            _latency("filtered top-10:", filtered) + f" (p99 target <= {P99_TARGET_MS} ms:"
            f" {_verdict(filtered['p99_ms'] <= P99_TARGET_MS)})",
            _latency("shard-wide IDF top-10:", baseline) + f" (baseline; p99 <= {P99_TARGET_MS} ms:"
            f" {_verdict(baseline['p99_ms'] <= P99_TARGET_MS)})",
            _latency("unfiltered top-10:", search["unfiltered"]),
            f"tenant statistics / shard-wide: p50 x{search['filtered_over_shard_wide_p50']:.2f},"
            f" p99 x{search['filtered_over_shard_wide_p99']:.2f};"
            f" filtered / unfiltered: p50 x{search['filtered_over_unfiltered_p50']:.2f},"
            f" p99 x{search['filtered_over_unfiltered_p99']:.2f};"
            f" mean filtered hits {search['mean_filtered_hits']:.1f}",
            f"RSS MiB: start {rss['process_start']}, shard open {rss['shard_open']},"
            f" after queries {rss['after_queries']}; on disk {record['disk_mib']} MiB;"
            f" {search['segments']} segments",
            *_large_lines(record.get("large_tenant")),
            *_optimized_lines(record.get("after_optimize")),
        ]
    )


def _large_lines(large: dict[str, Any] | None) -> list[str]:
    if not large:
        return []
    return [
        f"one large tenant ({large['chunks']:,} chunks, {large['queries']:,} queries):",
        "  " + _latency("filtered:", large["filtered"]),
        "  " + _latency("shard-wide IDF:", large["shard_wide_idf"]),
    ]


def _optimized_lines(optimized: dict[str, Any] | None) -> list[str]:
    if not optimized:
        return []
    return [
        f"after optimize ({optimized['optimize_seconds']} s, {optimized['segments']} segments,"
        f" RSS {optimized['rss_mib']} MiB):",
        "  " + _latency("filtered:", optimized["filtered"]),
        "  " + _latency("shard-wide IDF:", optimized["shard_wide_idf"]),
        "  " + _latency("unfiltered:", optimized["unfiltered"]),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run, print the summary, write `benchmarks/results/edge-scale-<time>.json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then run the engine's optimizers and time the queries again",
    )
    parser.add_argument(
        "--large-tenant",
        type=int,
        default=0,
        metavar="CHUNKS",
        help="also load one tenant with this many chunks and time its queries apart",
    )
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bulkhead-edge-scale-", dir=args.dir) as workdir:
        record = asyncio.run(run(args, Path(workdir)))
    print(report(record))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"edge-scale-{record['timestamp']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"written {out}")
    ok = (
        record["search"]["filtered"]["p99_ms"] <= P99_TARGET_MS
        and record["ingest"]["chunks_per_second"] >= INGEST_TARGET
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
