"""`python -m benchmarks.workers`: `bulkhead serve --workers N`, N = 1 and 2, on the server adapter.

Closed-loop RPS and server CPU per request of `/v1/search` and `/v1/chat` (the tenants' chain
is the provider emulator, as in `benchmarks.chat`) with one worker process and with two, in one
run, and the ratio N=2 / N=1. The vector store is the Qdrant REST facade
(`tests/qdrant_facade.py`, qdrant-client's local mode behind Qdrant's REST shape; no Qdrant
server binary runs here), started with `--cache-reads`: local mode's exact search costs tens of
milliseconds per query where a server takes about one, and it would run on the same two cores
as the processes being measured. With the cache, a repeated search is answered from memory
(the corpus is written once, before any measurement), so the facade costs about what a fast
server's HTTP answer would and Bulkhead's own work dominates.

What it can show on this machine: whether a second process lets Bulkhead use the second core
(RPS up, CPU per request about the same), and what N processes cost (RSS, start-up). What it
cannot: scaling beyond two cores, or throughput with a real Qdrant server. The load generator,
Postgres, the emulator and the facade share the same two cores, so N=2 competes with them;
the ratio is a lower bound of what a box with spare cores would see.

Server CPU per request counts the CPU time of `bulkhead serve`'s whole process tree (parent
and workers) over the measured window, divided by the requests completed; the facade's is
reported beside it; Postgres's is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
from qdrant_client import AsyncQdrantClient

from app.tenancy.scope import Role, TenantScope
from app.vectors.qdrant_clients import SharedClient
from app.vectors.qdrant_server import CollectionNames, QdrantServerIndex, ensure_collection
from benchmarks import corpus, harness, report, stack
from benchmarks.chat import chat_stack
from benchmarks.targets import Target, chat_target, search_target
from tests.qdrant_facade import facade_command

WORKER_COUNTS = (1, 2)
BODIES = 50
"""Distinct request bodies per target: the facade's read cache fills within the warm-up."""
UPSERT_BATCH = 256


def parse_args(argv: list[str] | None) -> harness.RunConfig:
    """Run options (the harness's)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__)
    parser.add_argument("--chunks", type=int, default=1_000, help="chunks to load (1000)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants (10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up (3)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = parser.parse_args(argv)
    if args.tenants < 1 or args.chunks < args.tenants or args.concurrency < 1:
        parser.error("need tenants >= 1, chunks >= tenants, concurrency >= 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive, --warmup not negative")
    return harness.RunConfig(
        chunks=args.chunks,
        tenants=args.tenants,
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        max_requests=1_000_000,
        keep=args.keep,
    )


async def load_corpus(
    url: str, prefix: str, vocabulary: corpus.Vocabulary, quotas: dict[str, int]
) -> int:
    """Write each tenant's synthetic chunks through the server adapter; how many."""
    client = AsyncQdrantClient(url=url)
    names = CollectionNames(prefix)
    await ensure_collection(client, names.shared)
    index = QdrantServerIndex(SharedClient(client), isolation_of=lambda _: "shared", names=names)
    written = 0
    try:
        for tenant_id, count in quotas.items():
            scope = TenantScope(tenant_id=tenant_id, subject="bench", roles=frozenset())
            chunks = list(corpus.tenant_chunks(vocabulary, tenant_id, count))
            for start in range(0, len(chunks), UPSERT_BATCH):
                batch = chunks[start : start + UPSERT_BATCH]
                await index.upsert(scope=scope, chunks=batch)
                written += len(batch)
    finally:
        await index.close()
    return written


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """User plus system CPU seconds of `pid` and each of its descendants, by pid."""
    times: dict[int, float] = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            cpu = process.cpu_times()
            times[process.pid] = cpu.user + cpu.system
    return times


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants, in MiB (shared pages counted in each)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


def postgres_pids() -> list[int]:
    """The machine's Postgres processes (the server the benchmark database lives on)."""
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"].startswith("postgres")]


class CpuWindow:
    """CPU seconds of named process groups, and of the whole machine, between two samples."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        """Sample now; `groups` maps a name to root pids (their descendants count too)."""
        self._groups = groups
        self._started = time.perf_counter()
        self._machine = psutil.cpu_times()
        self._before = {name: self._sample(pids) for name, pids in groups.items()}

    @staticmethod
    def _sample(pids: list[int]) -> dict[int, float]:
        times: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                times |= tree_cpu_seconds(pid)
        return times

    def close(self) -> tuple[dict[str, float], float, float]:
        """(CPU seconds by group, CPU seconds of the whole machine, wall seconds)."""
        spent = {}
        for name, pids in self._groups.items():
            after, before = self._sample(pids), self._before[name]
            spent[name] = sum(after.values()) - sum(before.get(pid, 0.0) for pid in after)
        machine = psutil.cpu_times()
        busy = _busy(machine) - _busy(self._machine)
        return spent, busy, time.perf_counter() - self._started


def _busy(times: Any) -> float:
    """CPU seconds the machine spent not idle (iowait counts as idle)."""
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def connections_by_worker(server: stack.ServerProcess) -> list[int]:
    """Established connections to the server's port held by each worker, most first.

    With one worker the parent serves them itself; with several, the parent holds none.
    """
    root = psutil.Process(server.pid)
    counts = []
    for process in [root, *root.children()]:
        with contextlib.suppress(psutil.NoSuchProcess):
            held = sum(
                1
                for c in process.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED
            )
            if held:
                counts.append(held)
    return sorted(counts, reverse=True)


class SpreadProbe(threading.Thread):
    """Counts, once the load is on, how the load generator's connections spread over workers."""

    def __init__(self, server: stack.ServerProcess, after: float) -> None:
        """Probe `after` seconds from now."""
        super().__init__(daemon=True)
        self._server, self._after = server, after
        self.spread: list[int] = []

    def run(self) -> None:
        """Wait, then count."""
        time.sleep(self._after)
        self.spread = connections_by_worker(self._server)


@dataclasses.dataclass(frozen=True, slots=True)
class Figures:
    """One target at one worker count."""

    measurement: report.Measurement
    server_cpu_ms: float
    """CPU of serve's process tree per completed request, in milliseconds."""
    facade_cpu_ms: float
    cores: dict[str, float]
    """Cores busy over the measured window: by process group, `machine` for everything."""
    spread: list[int]
    """The load generator's connections held by each serving process, mid-run."""


def measure(
    target: Target,
    server: stack.ServerProcess,
    others: dict[str, list[int]],
    config: harness.RunConfig,
) -> Figures:
    """Warm up, then measure `target` with the CPU of serve's tree and of `others` bracketed."""
    if config.warmup:
        warmup = dataclasses.replace(config, warmup=0, duration=config.warmup)
        harness.measure(target, server, warmup)
    window = CpuWindow({"serve": [server.pid], **others})
    # The load generator's interpreter starts in ~0.5 s; its connections stay open to the end.
    probe = SpreadProbe(server, after=min(2.0, config.duration / 2))
    probe.start()
    measured = harness.measure(target, server, dataclasses.replace(config, warmup=0))
    spent, machine, wall = window.close()
    probe.join()
    result = measured.result
    requests = result.requests or 1
    cores = {name: seconds / wall for name, seconds in spent.items()}
    cores["loadgen"] = result.client_cpu * result.seconds / wall
    cores["machine"] = machine / wall
    return Figures(
        measured,
        1000 * spent["serve"] / requests,
        1000 * spent["facade"] / requests,
        cores,
        probe.spread,
    )


def prime(server: stack.ServerProcess, targets: list[Target]) -> None:
    """Send every distinct request of each target once, so the facade's cache holds them all.

    The load generator pairs body `n` with token `n mod tokens` (as here), so these are all
    the reads the measured runs make.
    """
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        for target in targets:
            for n, body in enumerate(target.bodies):
                token = target.tokens[n % len(target.tokens)]
                response = client.request(
                    target.method,
                    target.path,
                    content=body,
                    headers={
                        "authorization": f"Bearer {token}",
                        "content-type": "application/json",
                    },
                )
                response.raise_for_status()


def run(config: harness.RunConfig, workdir: Path) -> int:
    """Set up once, then serve and measure with each worker count; report the ratios."""
    say = harness.say
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    figures: dict[tuple[int, str], Figures] = {}
    servers_seen: dict[int, dict[str, float]] = {}
    with contextlib.ExitStack() as cleanup:
        owner_url, emulator, tenant_ids, issuer = chat_stack(workdir, config.tenants, cleanup)
        port = stack.free_port()
        facade = stack.ServerProcess(
            "facade",
            facade_command(port, None, cache_reads=True),
            port=port,
            env=stack.clean_environment(),
            log=workdir / "facade.log",
        )
        cleanup.callback(facade.stop)
        facade.wait_ready("/")
        vocabulary = corpus.Vocabulary()
        quotas = dict(
            zip(tenant_ids, corpus.chunk_quota(config.chunks, config.tenants), strict=True)
        )
        started = time.perf_counter()
        loaded = asyncio.run(load_corpus(facade.base_url, prefix, vocabulary, quotas))
        say(f"loaded {loaded:,} chunks through the facade in {time.perf_counter() - started:.1f} s")
        roles = [Role.CHAT, Role.SEARCH]
        tokens = [
            issuer.mint(tenant=t, subject=f"bench-user-{n}", roles=roles, ttl_seconds=7200)
            for n, t in enumerate(tenant_ids)
        ]
        targets = [
            dataclasses.replace(target, bodies=target.bodies[:BODIES])
            for target in (search_target(vocabulary, tokens), chat_target(vocabulary, tokens))
        ]
        env = {
            "BULKHEAD_VECTORS__BACKEND": "qdrant",
            "BULKHEAD_VECTORS__QDRANT__URL": facade.base_url,
            "BULKHEAD_VECTORS__QDRANT__COLLECTION_PREFIX": prefix,
            "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(workdir / "master.key"),
            "BULKHEAD_AUTH__DEV_SIGNING_KEY_FILE": str(workdir / "dev-issuer.pem"),
        }
        for workers in WORKER_COUNTS:
            rundir = workdir / f"workers-{workers}"
            rundir.mkdir()
            with contextlib.ExitStack() as serving:
                bulkhead = harness.start_servers(
                    rundir,
                    owner_url,
                    serving,
                    floor=False,
                    command=[*stack.serve_command(), "--workers", str(workers)],
                    env=env,
                )["bulkhead"]
                ready = bulkhead.wait_ready("/readyz")
                say(f"--workers {workers}: ready in {ready:.1f} s")
                harness.preflight(bulkhead, targets)
                if workers == WORKER_COUNTS[0]:
                    started = time.perf_counter()
                    prime(bulkhead, targets)
                    say(f"primed the facade's cache in {time.perf_counter() - started:.1f} s")
                servers_seen[workers] = {
                    "ready_seconds": ready,
                    "rss_mib_ready": tree_rss_mib(bulkhead.pid),
                }
                others = {
                    "facade": [facade.pid],
                    "emulator": [emulator.pid],
                    "postgres": postgres_pids(),
                }
                for target in targets:
                    named = dataclasses.replace(target, name=f"{target.name} N={workers}")
                    figures[workers, target.name] = measure(named, bulkhead, others, config)
                servers_seen[workers]["rss_mib_after"] = tree_rss_mib(bulkhead.pid)
    return _report(config, figures, servers_seen)


def _report(
    config: harness.RunConfig,
    figures: dict[tuple[int, str], Figures],
    servers: dict[int, dict[str, float]],
) -> int:
    say = harness.say
    measurements = [f.measurement for f in figures.values()]
    say("")
    say(report.table(measurements, floor="search N=1"))
    say("(the table's server CPU is the parent process's alone; per request, whole tree:)")
    ratios: dict[str, dict[str, float]] = {}
    for name in ("search", "chat"):
        one, two = figures[1, name], figures[2, name]
        rps = two.measurement.result.rps / one.measurement.result.rps
        ratios[name] = {"rps": rps, "server_cpu_ms": two.server_cpu_ms / one.server_cpu_ms}
        say(
            f"{name}: N=1 {one.measurement.result.rps:,.0f} RPS, N=2"
            f" {two.measurement.result.rps:,.0f} RPS: ratio {rps:.2f}; serve's CPU per request"
            f" {one.server_cpu_ms:.2f} -> {two.server_cpu_ms:.2f} ms, the facade's"
            f" {one.facade_cpu_ms:.2f} -> {two.facade_cpu_ms:.2f} ms"
        )
    say("cores busy while measuring (of the machine's; loadgen from its own sampling):")
    for (workers, name), f in figures.items():
        parts = ", ".join(f"{group} {cores:.2f}" for group, cores in f.cores.items())
        say(f"  {name} N={workers}: {parts}; connections per worker {f.spread}")
    for workers, seen in servers.items():
        say(
            f"--workers {workers}: ready in {seen['ready_seconds']:.1f} s, RSS of the process"
            f" tree {seen['rss_mib_ready']:,.0f} MiB ready, {seen['rss_mib_after']:,.0f} MiB after"
        )
    say(f"machine: {os.cpu_count()} CPUs shared by the load generator, Postgres, emulator, facade")
    banner = report.error_banner(measurements)
    extra: dict[str, Any] = {
        "benchmark": "workers",
        "valid": banner is None,
        "config": dataclasses.asdict(config),
        "ratios_n2_over_n1": ratios,
        "cpu_ms_per_request": {
            f"{name} N={workers}": {"serve": f.server_cpu_ms, "facade": f.facade_cpu_ms}
            for (workers, name), f in figures.items()
        },
        "cores_busy": {f"{name} N={workers}": f.cores for (workers, name), f in figures.items()},
        "connections_per_worker": {
            f"{name} N={workers}": f.spread for (workers, name), f in figures.items()
        },
        "servers": servers,
        "environment": harness.environment(bool(os.environ.get("DATABASE_URL"))),
    }
    say(f"results: {report.write_json(extra, measurements)}")
    if banner:
        say(banner)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the workers benchmark; 0 when every request succeeded."""
    config = parse_args(argv)
    return harness.run_in_scratch(
        "bulkhead-bench-workers-", keep=config.keep, body=lambda workdir: run(config, workdir)
    )


if __name__ == "__main__":
    sys.exit(main())
