"""Orchestration: set up a throwaway Bulkhead, load it, measure every target, report, clean up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from app.config import Settings
from app.db.migrate import upgrade
from app.identity.dev_issuer import DevIssuer
from app.secrets.kek import load_master_key
from app.tenancy.scope import Role
from benchmarks import corpus, report, stack
from benchmarks.loadgen import LoadPlan, LoadResult
from benchmarks.targets import FLOOR, Target, default_targets

APP_ROLE = "bulkhead_app"
TOKEN_TTL_SECONDS = 6 * 3600
LOADGEN_GRACE_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Size and shape of one run."""

    chunks: int
    tenants: int
    duration: float
    warmup: float
    concurrency: int
    max_requests: int
    keep: bool
    rate: float = 0.0
    """Open loop: requests per second on a fixed schedule (0: closed loop at `concurrency`)."""


def parse_args(argv: list[str] | None) -> RunConfig:
    """Command-line options; `--quick` shrinks the run to a smoke test."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Load N chunks across M tenants, then measure /v1/search and /v1/chat"
        " against a bare Litestar endpoint (the floor).",
    )
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks to load (100000)")
    parser.add_argument("--tenants", type=int, default=100, help="tenants (100)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="cap per target (1000000)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000 chunks, 10 tenants, 3 s"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chunks, args.tenants, args.duration = 1_000, 10, 3.0
    if args.tenants < 1 or args.chunks < args.tenants:
        parser.error("need at least one tenant and at least one chunk per tenant")
    if args.concurrency < 1 or args.duration <= 0 or args.warmup < 0 or args.max_requests < 1:
        parser.error("--concurrency, --duration and --max-requests must be positive")
    return RunConfig(
        chunks=args.chunks,
        tenants=args.tenants,
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        max_requests=args.max_requests,
        keep=args.keep,
    )


def say(message: str) -> None:
    """Progress on stdout, unbuffered."""
    print(message, flush=True)


def run_in_scratch(prefix: str, *, keep: bool, body: Callable[[Path], int]) -> int:
    """`body` in a new temporary directory, with no Bulkhead or OpenTelemetry setting set.

    The run configures the service itself; settings from the caller's shell would skew it.
    The directory is removed afterwards unless `keep`; the wall time is printed.
    """
    for key in [k for k in os.environ if k.startswith(("BULKHEAD_", "OTEL_"))]:
        del os.environ[key]
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return body(workdir)
    finally:
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        say(f"total wall time {time.perf_counter() - started:,.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every request succeeded, 1 when any failed."""
    config = parse_args(argv)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    # A generated dev master key in a throwaway dir is expected here, not worth a warning.
    logging.getLogger("app.secrets.kek").setLevel(logging.ERROR)
    database_url = os.environ.get("DATABASE_URL")
    # The run configures the service itself; settings from the caller's shell would skew it.
    for key in [k for k in os.environ if k.startswith(("BULKHEAD_", "OTEL_"))]:
        del os.environ[key]
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bulkhead-bench-"))
    try:
        return run(config, workdir, database_url=database_url, started=started)
    finally:
        if config.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        say(f"total wall time {time.perf_counter() - started:,.1f} s")


def run(config: RunConfig, workdir: Path, *, database_url: str | None, started: float) -> int:
    """Set up, load, measure and report, inside `workdir`; tear everything down on the way out."""
    with contextlib.ExitStack() as cleanup:
        say("Postgres: " + ("fresh database on DATABASE_URL" if database_url else "embedded"))
        owner_url = cleanup.enter_context(stack.postgres(workdir, server_url=database_url))
        upgrade(owner_url, app_role=APP_ROLE)
        tenant_ids = corpus.tenant_ids(config.tenants)
        kek = load_master_key(Settings(dev=True, data_dir=workdir))
        asyncio.run(stack.onboard(owner_url, tenant_ids, kek=kek))
        say(f"onboarded {len(tenant_ids)} tenants")
        issuer = DevIssuer.load_or_create(
            workdir / "dev-issuer.pem", issuer=stack.DEV_ISSUER, audience=stack.AUDIENCE
        )
        tokens = [
            issuer.mint(
                tenant=tenant_id,
                subject=f"bench-user-{n}",
                roles=[Role.CHAT, Role.SEARCH],
                ttl_seconds=TOKEN_TTL_SECONDS,
            )
            for n, tenant_id in enumerate(tenant_ids)
        ]

        vocabulary = corpus.Vocabulary()
        quotas = dict(
            zip(tenant_ids, corpus.chunk_quota(config.chunks, config.tenants), strict=True)
        )
        say(f"loading {config.chunks:,} chunks into the Qdrant Edge shard ...")
        loaded = asyncio.run(
            corpus.load_corpus(workdir / "qdrant", vocabulary, quotas, progress=say)
        )
        say(
            f"loaded {loaded.chunks:,} chunks: {loaded.chunks_per_second:,.0f} chunks/s"
            f" (BM25 + upsert), flush+close {loaded.close_seconds:.1f} s,"
            f" wall {loaded.wall_seconds:.1f} s"
        )

        servers = start_servers(workdir, owner_url, cleanup)
        bulkhead = servers["bulkhead"]
        ready_seconds = bulkhead.wait_ready("/readyz")
        servers[FLOOR].wait_ready("/floor")
        rss_ready = bulkhead.rss_mib()
        say(f"servers ready (Bulkhead in {ready_seconds:.1f} s, RSS {rss_ready:,.0f} MiB)")

        targets = default_targets(vocabulary, tokens)
        preflight(bulkhead, targets)
        measurements = [measure(target, servers[target.server], config) for target in targets]
        rss_after = bulkhead.rss_mib()

    say("")
    say(
        f"chunks {loaded.chunks:,}  tenants {config.tenants}"
        f"  ingest {loaded.chunks_per_second:,.0f} chunks/s"
        f"  server RSS {rss_ready:,.0f} MiB ready / {rss_after:,.0f} MiB after load"
        f"  concurrency {config.concurrency}  measured {config.duration:g} s per target"
    )
    say(report.table(measurements, floor=FLOOR))
    banner = report.error_banner(measurements)
    path = report.write_json(
        {
            "valid": banner is None,
            "config": asdict(config),
            "ingest": {**asdict(loaded), "chunks_per_second": loaded.chunks_per_second},
            "server": {
                "rss_mib_ready": rss_ready,
                "rss_mib_after": rss_after,
                "ready_seconds": ready_seconds,
            },
            "environment": environment(database_url is not None),
            "wall_seconds": time.perf_counter() - started,
        },
        measurements,
    )
    say(f"results: {path}")
    if banner:
        say(banner)
        return 1
    return 0


def start_servers(
    workdir: Path,
    owner_url: str,
    cleanup: contextlib.ExitStack,
    *,
    floor: bool = True,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    root: Path = stack.REPO_ROOT,
    label: str = "bulkhead",
) -> dict[str, stack.ServerProcess]:
    """Start Bulkhead (`bulkhead serve`) and the floor, same uvicorn flags; stopped by `cleanup`.

    With `floor=False` only Bulkhead is started; `command` replaces `bulkhead serve` (a
    wrapper around it), `env` adds variables to its environment, `root` is the checkout it
    runs from (another version, as a baseline) and `label` names its log file.
    """
    clean = stack.clean_environment()
    tenants_dir = workdir / "no-tenants"  # empty: the demo corpus is not seeded
    tenants_dir.mkdir(exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    port = stack.free_port()
    bulkhead = stack.ServerProcess(
        "bulkhead",
        command or stack.serve_command(),
        port=port,
        env={
            **clean,
            **(env or {}),
            "BULKHEAD_HOST": "127.0.0.1",
            "BULKHEAD_PORT": str(port),
            "BULKHEAD_DEV": "true",
            "BULKHEAD_DATA_DIR": str(workdir),
            "BULKHEAD_TENANTS_DIR": str(tenants_dir),
            "DATABASE_URL": owner_url,
        },
        log=logs / f"{label}.log",
        root=root,
    )
    cleanup.callback(bulkhead.stop)
    if not floor:
        return {"bulkhead": bulkhead}
    floor_server = stack.ServerProcess(
        FLOOR,
        stack.uvicorn_command("benchmarks.floor_app:create_app", stack.free_port()),
        env=clean,
        log=logs / "floor.log",
    )
    cleanup.callback(floor_server.stop)
    return {"bulkhead": bulkhead, FLOOR: floor_server}


def preflight(server: stack.ServerProcess, targets: list[Target]) -> None:
    """Send each Bulkhead target's first request once; stop on failure or empty results.

    Raises:
        RuntimeError: A request failed; the message carries the body and the server's log.
    """
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        for target in targets:
            if target.server != "bulkhead":
                continue
            response = client.request(
                target.method,
                target.path,
                content=target.bodies[0] if target.bodies else None,
                headers={
                    "authorization": f"Bearer {target.tokens[0]}",
                    "content-type": "application/json",
                },
            )
            if not response.is_success:
                raise RuntimeError(
                    f"preflight {target.method} {target.path} -> {response.status_code}:"
                    f" {response.text[:2000]}\n--- server log ---\n{server.log_tail()}"
                )
            body = response.json()
            hits = len(body.get("results", body.get("citations", [])))
            say(f"preflight {target.name}: {response.status_code}, {hits} results/citations")
            if hits == 0:
                say(f"WARNING: {target.name} returned nothing; the run measures empty answers")


def measure(target: Target, server: stack.ServerProcess, config: RunConfig) -> report.Measurement:
    """Put `target` under load from a separate load-generator process."""
    plan = LoadPlan(
        base_url=server.base_url,
        method=target.method,
        path=target.path,
        bodies=target.bodies,
        tokens=target.tokens,
        concurrency=config.concurrency,
        warmup_seconds=config.warmup,
        duration_seconds=config.duration,
        max_requests=config.max_requests,
        server_pid=server.pid,
        rate=config.rate,
    )
    load = f"{config.rate:g}/s paced" if config.rate else f"concurrency {config.concurrency}"
    say(
        f"measuring {target.name} ({load}): {config.warmup:g} s warm-up + {config.duration:g} s ..."
    )
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen"],
        input=json.dumps(asdict(plan)),
        capture_output=True,
        text=True,
        timeout=config.warmup + config.duration + LOADGEN_GRACE_SECONDS,
        cwd=stack.REPO_ROOT,
        env={**stack.clean_environment(), "PYTHONPATH": str(stack.REPO_ROOT)},
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{completed.stderr[-4000:]}")
    result = LoadResult(**json.loads(completed.stdout))
    if result.errors:
        say(f"  {result.errors:,} errors; server log tail:\n{server.log_tail()}")
    return report.Measurement(target=target.name, result=result)


def environment(external_postgres: bool) -> dict[str, Any]:
    """Versions and machine facts that a result depends on."""
    versions = {}
    for package in ("litestar", "uvicorn", "uvloop", "httptools", "qdrant-edge-py", "asyncpg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "postgres": "DATABASE_URL" if external_postgres else "embedded",
        "packages": versions,
    }
