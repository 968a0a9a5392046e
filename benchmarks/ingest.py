"""`python -m benchmarks.ingest`: BM25 ingestion rates, and what publishing a version costs.

In one run, on one fresh shard and database:

1. **upsert** (the baseline, as `python -m benchmarks` measures it): `EdgeIndex.upsert` of
   synthetic chunks in batches of 1,000: BM25 embedding plus the shard update.
2. **service**: `DocumentService.prepare` + `ingest` of the same kind of text as documents of
   ten sections each, 20 documents per call: normalisation, chunking, the Postgres rows in one
   transaction, the pending upsert and the publish (reveal + retire) of each document.
3. **re-ingest**: the same documents again (each publish now also deletes a version).
4. **publish**: how long one publish takes, which is how long it holds searches back behind
   the version gate: for a request of 20 ten-chunk documents, and for one 1,000-chunk document.

Prints a summary and writes `benchmarks/results/ingest-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.config import ChunkingSettings, LimitSettings, Settings
from app.db.migrate import upgrade
from app.db.pool import create_pool
from app.db.urls import with_user
from app.retrieval.schemas import DocumentIn
from app.retrieval.service import DocumentService
from app.secrets.kek import load_master_key
from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex
from benchmarks import corpus, stack

APP_ROLE = "bulkhead_app"
SECTIONS = 10
DOCUMENTS_PER_CALL = 20
RESULTS = Path(__file__).resolve().parent / "results"


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="bench", roles=frozenset({Role.INGEST}))


def _documents(vocabulary: corpus.Vocabulary, count: int, seed: str) -> list[DocumentIn]:
    rng = random.Random(seed)
    documents = []
    for n in range(count):
        sections = (
            f"## Part {i + 1}\n\n{vocabulary.text(rng, rng.randint(*corpus.WORDS_PER_CHUNK))}"
            for i in range(SECTIONS)
        )
        documents.append(DocumentIn(title=f"Doc {n}", text="\n\n".join(sections), id=f"doc-{n}"))
    return documents


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _service_rate(
    service: DocumentService, scope: TenantScope, documents: list[DocumentIn]
) -> tuple[int, float]:
    chunks = 0
    started = time.perf_counter()
    for start in range(0, len(documents), DOCUMENTS_PER_CALL):
        prepared = service.prepare(documents[start : start + DOCUMENTS_PER_CALL])
        written = await service.ingest(scope=scope, documents=prepared)
        chunks += sum(n for _, n in written)
    return chunks, time.perf_counter() - started


class _TimedPublish:
    """Wraps `EdgeIndex.publish` to record how long each call takes."""

    def __init__(self, index: EdgeIndex) -> None:
        self.samples: list[float] = []
        self._publish = index.publish
        index.publish = self  # type: ignore[method-assign]

    async def __call__(self, **kwargs: Any) -> None:
        started = time.perf_counter()
        await self._publish(**kwargs)
        self.samples.append((time.perf_counter() - started) * 1000)


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": ordered[-1],
    }


async def measure(owner_url: str, workdir: Path, chunks: int, say: Callable[[str], None]) -> Any:
    """Run the four measurements; returns the figures."""
    vocabulary = corpus.Vocabulary()
    upsert_tenant, service_tenant, big_tenant = "bench-0001", "bench-0002", "bench-0003"
    index = EdgeIndex.open(workdir / "qdrant")
    pool = await create_pool(with_user(owner_url, APP_ROLE), min_size=1, max_size=2)
    try:
        records = list(corpus.tenant_chunks(vocabulary, upsert_tenant, chunks))
        started = time.perf_counter()
        for start in range(0, len(records), 1000):
            await index.upsert(scope=_scope(upsert_tenant), chunks=records[start : start + 1000])
        upsert_rate = len(records) / (time.perf_counter() - started)
        say(f"upsert      {upsert_rate:,.0f} chunks/s ({len(records):,} chunks, baseline)")

        service = DocumentService(
            pool=pool, index=index, limits=LimitSettings(), chunking=ChunkingSettings()
        )
        timed = _TimedPublish(index)
        documents = _documents(vocabulary, chunks // SECTIONS, "bench:service")
        written, seconds = await _service_rate(service, _scope(service_tenant), documents)
        service_rate = written / seconds
        say(f"service     {service_rate:,.0f} chunks/s ({written:,} chunks, first ingest)")
        rewritten, seconds = await _service_rate(service, _scope(service_tenant), documents)
        reingest_rate = rewritten / seconds
        say(f"re-ingest   {reingest_rate:,.0f} chunks/s ({rewritten:,} chunks, replacing)")
        small = _ms(timed.samples)
        say(
            f"publish     20 documents x 10 chunks: p50 {small['p50_ms']:.2f} ms,"
            f" max {small['max_ms']:.2f} ms"
        )

        timed.samples.clear()
        big = _documents(vocabulary, 1, "bench:big")[0]
        big = DocumentIn(title="Big", text="\n\n".join([big.text] * 100), id="big")
        for _ in range(3):
            await service.ingest(scope=_scope(big_tenant), documents=service.prepare([big]))
        large = _ms(timed.samples)
        say(f"publish     1,000-chunk document: max {large['max_ms']:.1f} ms (3 re-ingests)")
    finally:
        await pool.close()
        await index.close()
    return {
        "upsert_chunks_per_second": upsert_rate,
        "service_chunks_per_second": service_rate,
        "reingest_chunks_per_second": reingest_rate,
        "publish_20_documents_of_10_chunks": small,
        "publish_1000_chunks": large,
        "rss_mib": _rss_mib(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__)
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bulkhead-bench-ingest-") as directory:
        workdir = Path(directory)
        with stack.postgres(workdir, server_url=os.environ.get("DATABASE_URL")) as owner_url:
            upgrade(owner_url, app_role=APP_ROLE)
            kek = load_master_key(Settings(dev=True, data_dir=workdir))
            asyncio.run(
                stack.onboard(owner_url, ["bench-0001", "bench-0002", "bench-0003"], kek=kek)
            )
            figures = asyncio.run(measure(owner_url, workdir, args.chunks, print))
    figures["load_average"] = os.getloadavg()
    figures["cpus"] = os.cpu_count()
    print(f"RSS {figures['rss_mib']:,.0f} MiB, load average {figures['load_average'][0]:.1f}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(figures, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
