"""`python -m benchmarks.soak`: does the served process's memory hold under sustained load?

Bulkhead runs as users run it (`bulkhead serve`, one process, the provider emulator behind the
tenants' chains). Each *kind* of request is then sent on its own, on loopback, in a closed loop:

- `reingest`: `POST /v1/documents`, one document per request, always the same `--ids`
  document ids (every request replaces a version: new chunks written, the old ones deleted);
- `search`: `POST /v1/search`;
- `chat`: `POST /v1/chat` (a new conversation each time, through the `openai` SDK);
- `stream`: the same with `stream: true` (server-sent events);
- `list`: `GET /v1/documents`;
- `mixed`: all of the above at once, the concurrency shared between them (not run unless
  named in `--kinds`: it needs a long window, see below).

For each kind: `--warmup` requests first (not counted: caches fill, the allocator settles),
then the served process's resident memory (VmRSS, with its anonymous and file-backed parts,
and the part mapped from the vector shard's write-ahead log) is read every `--sample-every`
requests until `--requests` were sent or the kind's time ran out: `--write-seconds` for the
kinds that write vectors (`reingest`, `mixed`), `--seconds` for the others. The growth is the
least-squares slope of RSS against requests, given per 10,000 requests in MiB and as a share
of the RSS after warm-up; the target is <= 2% per 10,000 requests per kind.

Writing kinds need the longer window because their memory is a sawtooth even when it holds:
Qdrant Edge's write-ahead log is a ring of 32 MiB memory-mapped segments (a segment's written
pages stay resident until it is dropped after a flush), and the shard's upkeep frees deleted
chunks every few thousand chunks written (`app/vectors/upkeep.py`). A window shorter than a
few such periods measures a rising edge, not a trend.

With `--heap` the server runs under `tracemalloc` (`benchmarks/traced_serve.py`): the Python
heap is sampled with RSS, so growth in Python objects is told from native growth (RSS minus
heap: Qdrant Edge, C extensions, the allocator), and the source lines that grew most during
each kind are printed. Tracing slows the server several times over.

The run is bounded (time and requests per kind: ~6 minutes with the defaults), loopback only,
and stops everything it started. Prints a table; writes `benchmarks/results/soak-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.tenancy.scope import Role
from benchmarks import chat, corpus, harness, report, stack
from benchmarks.loadgen import LoadPlan, LoadResult, generate_load
from benchmarks.targets import BODY_VARIANTS, Target, chat_target, search_target

TARGET_GROWTH_PERCENT = 2.0
PER = 10_000
KINDS = ("reingest", "search", "chat", "stream", "list", "mixed")
DEFAULT_KINDS = ("reingest", "search", "chat", "stream", "list")
WRITING_KINDS = frozenset({"reingest", "mixed"})
SECTIONS = 4
"""Sections per soak document: one chunk each (the chunker cuts at headings)."""


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """Size and bounds of one soak run."""

    kinds: tuple[str, ...]
    tenants: int
    ids: int
    requests: int
    warmup: int
    sample_every: int
    seconds: float
    write_seconds: float
    concurrency: int
    heap: bool
    keep: bool


@dataclass(frozen=True, slots=True)
class Sample:
    """The served process's memory after `requests` measured requests of one kind."""

    requests: int
    seconds: float
    rss_mib: float
    anon_mib: float
    file_mib: float
    wal_mib: float
    """Resident pages mapped from the vector shard's write-ahead log (part of `file_mib`)."""
    p99_ms: float
    """The 99th percentile latency of the step that ended here (0 for the first sample)."""
    heap_mib: float = 0.0
    """The Python heap `tracemalloc` traces (0 without `--heap`)."""


@dataclass(frozen=True, slots=True)
class KindResult:
    """One kind's soak: its samples, the fitted growth, errors."""

    kind: str
    samples: list[Sample]
    errors: int
    error_samples: list[str]
    heap_top: list[str] = dataclasses.field(default_factory=list)
    """With `--heap`: the source lines whose allocations grew most while measuring."""

    @property
    def requests(self) -> int:
        """Measured requests (warm-up excluded)."""
        return self.samples[-1].requests

    @property
    def rps(self) -> float:
        """Measured requests per second."""
        seconds = self.samples[-1].seconds
        return self.requests / seconds if seconds else 0.0

    def growth_mib(self, field: str = "rss_mib") -> float:
        """Least-squares slope of `field` against requests, in MiB per `PER` requests."""
        requests = [s.requests for s in self.samples]
        if len(set(requests)) < 2:
            return 0.0
        values: list[float] = [getattr(s, field) for s in self.samples]
        slope, _ = statistics.linear_regression(requests, values)
        return slope * PER

    @property
    def p99_ms(self) -> float:
        """The median over the steps of each step's p99 latency (ms)."""
        return statistics.median(s.p99_ms for s in self.samples[1:]) if self.requests else 0.0

    @property
    def worst_p99_ms(self) -> float:
        """The worst step's p99 latency (ms): what an upkeep pause costs shows here."""
        return max(s.p99_ms for s in self.samples)

    @property
    def growth_percent(self) -> float:
        """RSS growth per `PER` requests as a share of the RSS after warm-up."""
        return 100 * self.growth_mib() / self.samples[0].rss_mib

    @property
    def met(self) -> bool:
        """Growth within the target, and every request answered 2xx."""
        return self.growth_percent <= TARGET_GROWTH_PERCENT and not self.errors


def memory(pid: int) -> tuple[float, float, float, float]:
    """(VmRSS, RssAnon, RssFile, RSS of write-ahead-log mappings) of process `pid`, in MiB."""
    wanted = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            wanted[name] = int(value.split()[0]) / 1024
    wal_kib = 0
    in_wal = False
    for line in Path(f"/proc/{pid}/smaps").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if "-" in fields[0]:  # a mapping's header line: range, perms, offset, dev, inode, path
            in_wal = len(fields) > 5 and "/wal/" in fields[5]
        elif in_wal and fields[0] == "Rss:":
            wal_kib += int(fields[1])
    return wanted["VmRSS"], wanted["RssAnon"], wanted["RssFile"], wal_kib / 1024


class HeapProbe:
    """Reads the traced Python heap of a `traced_serve` process (see there) by signal."""

    TIMEOUT_SECONDS = 120.0

    def __init__(self, pid: int, path: Path) -> None:
        """Probe process `pid`, which answers in `path`."""
        self._pid = pid
        self._path = path
        self._sent = 0

    def _ask(self, signum: int) -> dict[str, Any]:
        self._sent += 1
        os.kill(self._pid, signum)
        deadline = time.monotonic() + self.TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                answer: dict[str, Any] = json.loads(self._path.read_text())
                if answer["signals"] == self._sent:
                    return answer
            time.sleep(0.05)
        raise RuntimeError(f"no heap answer from {self._pid} in {self.TIMEOUT_SECONDS:.0f} s")

    def heap_mib(self) -> float:
        """The traced heap's size now."""
        return float(self._ask(signal.SIGUSR1)["traced"]) / 2**20

    def growth(self) -> list[str]:
        """The lines that grew most since the previous call (nothing on the first)."""
        top: list[str] = self._ask(signal.SIGUSR2)["top"]
        return top


def reingest_target(vocabulary: corpus.Vocabulary, tokens: list[str], ids: int) -> Target:
    """`POST /v1/documents` of one document, cycling through `ids` ids per the tenants' tokens.

    Body n carries id `soak-<n mod ids>` and goes with token n mod len(tokens), so each
    (tenant, id) pair recurs (ids is a multiple of the tenant count) with changing text.
    """
    rng = random.Random(5)
    bodies = []
    for n in range(max(BODY_VARIANTS, ids)):
        text = "\n\n".join(
            f"## Part {i + 1}\n\n{vocabulary.text(rng, rng.randint(*corpus.WORDS_PER_CHUNK))}"
            for i in range(SECTIONS)
        )
        document = {"id": f"soak-{n % ids}", "title": f"Soak {n % ids}", "text": text}
        bodies.append(json.dumps({"documents": [document]}))
    return Target("reingest", "bulkhead", "POST", "/v1/documents", bodies=bodies, tokens=tokens)


def stream_target(vocabulary: corpus.Vocabulary, tokens: list[str]) -> Target:
    """`POST /v1/chat` with `stream: true`."""
    plain = chat_target(vocabulary, tokens, seed=4)
    bodies = [json.dumps({**json.loads(body), "stream": True}) for body in plain.bodies]
    return dataclasses.replace(plain, name="stream", bodies=bodies)


def list_target(tokens: list[str]) -> Target:
    """`GET /v1/documents`, a page of 50."""
    return Target("list", "bulkhead", "GET", "/v1/documents?limit=50", tokens=tokens)


def _plan(
    target: Target, base_url: str, *, concurrency: int, requests: int, seconds: float
) -> LoadPlan:
    return LoadPlan(
        base_url=base_url,
        method=target.method,
        path=target.path,
        bodies=target.bodies,
        tokens=target.tokens,
        concurrency=concurrency,
        warmup_seconds=0.0,
        duration_seconds=max(seconds, 0.001),
        max_requests=requests,
    )


def _load(
    targets: list[Target], base_url: str, *, concurrency: int, requests: int, seconds: float
) -> list[LoadResult]:
    """Send `requests` requests (or for `seconds`), shared between `targets`, all at once."""
    share = max(1, concurrency // len(targets))
    plans = [
        _plan(
            t,
            base_url,
            concurrency=share,
            requests=max(1, requests // len(targets)),
            seconds=seconds,
        )
        for t in targets
    ]

    async def everything() -> list[LoadResult]:
        return list(await asyncio.gather(*(generate_load(plan) for plan in plans)))

    return asyncio.run(everything())


def soak(
    kind: str,
    targets: list[Target],
    server: stack.ServerProcess,
    config: SoakConfig,
    heap: HeapProbe | None,
) -> KindResult:
    """Warm up, then load in steps of `sample_every` requests, reading RSS after each."""
    say = harness.say
    load = functools.partial(_load, base_url=server.base_url, concurrency=config.concurrency)
    seconds = config.write_seconds if kind in WRITING_KINDS else config.seconds
    say(f"{kind}: warm-up, {config.warmup:,} requests, then {seconds:g} s ...")
    warm = load(targets, requests=config.warmup, seconds=seconds)
    errors = sum(r.errors for r in warm)
    error_samples = [s for r in warm for s in r.error_samples]

    def sample(sent: int, seconds: float, p99_ms: float) -> Sample:
        heap_mib = heap.heap_mib() if heap else 0.0
        return Sample(sent, seconds, *memory(server.pid), p99_ms, heap_mib)

    if heap:
        heap.growth()  # the baseline snapshot
    started = time.perf_counter()
    samples = [sample(0, 0.0, 0.0)]
    sent = 0
    while sent < config.requests:
        left = seconds - (time.perf_counter() - started)
        if left <= 0:
            break
        step = min(config.sample_every, config.requests - sent)
        results = load(targets, requests=step, seconds=left)
        sent += sum(r.requests for r in results)
        errors += sum(r.errors for r in results)
        error_samples += [s for r in results for s in r.error_samples]
        p99_ms = max(r.p99_ms for r in results)
        samples.append(sample(sent, time.perf_counter() - started, p99_ms))
    top = heap.growth() if heap else []
    result = KindResult(kind, samples, errors, error_samples[:5], top)
    say(
        f"{kind}: {result.requests:,} requests in {samples[-1].seconds:.0f} s"
        f" ({result.rps:,.0f}/s), RSS {samples[0].rss_mib:,.1f} -> {samples[-1].rss_mib:,.1f} MiB,"
        f" {result.growth_mib():+.2f} MiB ({result.growth_percent:+.2f}%) per {PER:,} requests"
    )
    if heap:
        say(f"  Python heap {result.growth_mib('heap_mib'):+.2f} MiB per {PER:,}; grew most:")
        say("\n".join(f"    {line}" for line in top[:8]))
    if errors:
        say(f"  {errors:,} errors: {error_samples[:2]}\n{server.log_tail(20)}")
    return result


def heap_text(result: KindResult) -> str:
    """The Python heap's growth per `PER` requests, or `-` when it was not traced."""
    if not any(s.heap_mib for s in result.samples):
        return "-"
    return f"{result.growth_mib('heap_mib'):+.2f}"


def table(results: list[KindResult]) -> str:
    """One line per kind: throughput, RSS, growth per 10,000 requests (total, anon, file)."""
    header = (
        f"{'kind':<9} {'requests':>9} {'rps':>6} {'p99_ms':>7} {'worst':>7}"
        f" {'rss_start':>10} {'rss_end':>8}"
        f" {'MiB/10k':>8} {'%/10k':>7} {'anon/10k':>9} {'file/10k':>9} {'wal/10k':>8}"
        f" {'heap/10k':>9}"
        f" {'KiB/req':>8} {'errors':>7}  target"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r.kind:<9} {r.requests:>9,} {r.rps:>6.0f} {r.p99_ms:>7.1f} {r.worst_p99_ms:>7.1f}"
            f" {r.samples[0].rss_mib:>10.1f}"
            f" {r.samples[-1].rss_mib:>8.1f} {r.growth_mib():>+8.2f} {r.growth_percent:>+6.2f}%"
            f" {r.growth_mib('anon_mib'):>+9.2f} {r.growth_mib('file_mib'):>+9.2f}"
            f" {r.growth_mib('wal_mib'):>+8.2f}"
            f" {heap_text(r):>9} {r.growth_mib() * 1024 / PER:>+8.2f} {r.errors:>7,}"
            f"  {'met' if r.met else 'MISSED'}"
        )
    return "\n".join(lines)


def run(config: SoakConfig, workdir: Path) -> int:
    """Set up Postgres, the emulator, the tenants and `bulkhead serve`; soak each kind."""
    say = harness.say
    with contextlib.ExitStack() as cleanup:
        owner_url, _, tenant_ids, issuer = chat.chat_stack(workdir, config.tenants, cleanup)
        roles = [Role.INGEST, Role.SEARCH, Role.CHAT]
        tokens = [
            issuer.mint(tenant=t, subject=f"soak-user-{n}", roles=roles, ttl_seconds=7200)
            for n, t in enumerate(tenant_ids)
        ]
        heap_file = workdir / "heap.json"
        server = harness.start_servers(
            workdir,
            owner_url,
            cleanup,
            floor=False,
            command=[sys.executable, "-m", "benchmarks.traced_serve"] if config.heap else None,
            env={"SOAK_HEAP_FILE": str(heap_file)} if config.heap else None,
        )["bulkhead"]
        server.wait_ready("/readyz")
        heap = HeapProbe(server.pid, heap_file) if config.heap else None
        vocabulary = corpus.Vocabulary()
        every = {
            "reingest": reingest_target(vocabulary, tokens, config.ids),
            "search": search_target(vocabulary, tokens),
            "chat": chat_target(vocabulary, tokens),
            "stream": stream_target(vocabulary, tokens),
            "list": list_target(tokens),
        }
        # The documents searches and chats find: every id ingested once before any kind runs.
        seeded = _load(
            [every["reingest"]],
            server.base_url,
            concurrency=config.concurrency,
            requests=config.ids,
            seconds=config.write_seconds,
        )[0]
        say(f"seeded {seeded.requests:,} documents, RSS {memory(server.pid)[0]:,.1f} MiB")
        harness.preflight(server, [every["search"], every["chat"]])
        results = [
            soak(
                kind,
                list(every.values()) if kind == "mixed" else [every[kind]],
                server,
                config,
                heap,
            )
            for kind in config.kinds
        ]
    say("")
    say(table(results))
    met = all(r.met for r in results)
    say(
        f"target: RSS growth <= {TARGET_GROWTH_PERCENT:g}% per {PER:,} requests after warm-up,"
        f" per kind -> {'MET' if met else 'NOT MET'}"
    )
    report.RESULTS_DIR.mkdir(exist_ok=True)
    path = report.RESULTS_DIR / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    record: dict[str, Any] = {
        "benchmark": "soak",
        "config": dataclasses.asdict(config),
        "target_growth_percent_per_10k": TARGET_GROWTH_PERCENT,
        "targets_met": met,
        "kinds": [
            {
                "kind": r.kind,
                "requests": r.requests,
                "rps": r.rps,
                "p99_ms_median_of_steps": r.p99_ms,
                "p99_ms_worst_step": r.worst_p99_ms,
                "errors": r.errors,
                "error_samples": r.error_samples,
                "growth_mib_per_10k": r.growth_mib(),
                "growth_percent_per_10k": r.growth_percent,
                "anon_mib_per_10k": r.growth_mib("anon_mib"),
                "file_mib_per_10k": r.growth_mib("file_mib"),
                "wal_mib_per_10k": r.growth_mib("wal_mib"),
                "heap_mib_per_10k": r.growth_mib("heap_mib") if config.heap else None,
                "heap_top": r.heap_top,
                "samples": [dataclasses.asdict(s) for s in r.samples],
            }
            for r in results
        ],
        "environment": harness.environment(bool(os.environ.get("DATABASE_URL"))),
    }
    path.write_text(json.dumps(record, indent=2))
    say(f"results: {path}")
    return 0 if met else 1


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"comma-separated, from {', '.join(KINDS)}")
    return kinds


def parse_args(argv: list[str] | None) -> SoakConfig:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument(
        "--kinds", type=_kinds, default=DEFAULT_KINDS, help=f"({','.join(DEFAULT_KINDS)})"
    )
    parser.add_argument("--tenants", type=int, default=10, help="tenants (10)")
    parser.add_argument("--ids", type=int, default=300, help="document ids re-ingested (300)")
    parser.add_argument("--requests", type=int, default=50_000, help="per kind, measured (50000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="per kind, not measured (2000)")
    parser.add_argument("--sample-every", type=int, default=500, help="RSS read every (500)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="per reading kind, at most (20)"
    )
    parser.add_argument(
        "--write-seconds", type=float, default=180.0, help="per writing kind, at most (180)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument(
        "--heap", action="store_true", help="trace the Python heap too (slow; see above)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = parser.parse_args(argv)
    if min(args.tenants, args.ids, args.requests, args.sample_every, args.concurrency) < 1:
        parser.error("--tenants, --ids, --requests, --sample-every, --concurrency: at least 1")
    if args.ids % args.tenants or min(args.seconds, args.write_seconds) <= 0 or args.warmup < 0:
        parser.error("--ids a multiple of --tenants, seconds positive, --warmup not negative")
    return SoakConfig(
        kinds=args.kinds,
        tenants=args.tenants,
        ids=args.ids,
        requests=args.requests,
        warmup=args.warmup,
        sample_every=args.sample_every,
        seconds=args.seconds,
        write_seconds=args.write_seconds,
        concurrency=args.concurrency,
        heap=args.heap,
        keep=args.keep,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every kind met the target without errors."""
    config = parse_args(argv)
    return harness.run_in_scratch(
        "bulkhead-bench-soak-", keep=config.keep, body=lambda workdir: run(config, workdir)
    )


if __name__ == "__main__":
    sys.exit(main())
