"""`python -m benchmarks.chat`: `/v1/chat` on the provider emulator, next to the emulator alone.

Everything a production request does is on: JWT verification, BM25 retrieval over the
tenant's chunks, the tenant's chain through the official `openai` SDK with its key from the
local secrets backend, the conversation sealed and stored, the usage row, the audit row.
The emulator answers at once (zero latency), so what remains is Bulkhead's own cost.

Targets, measured in turn with the same load generator and concurrency, in one run:

- `emulator`: the OpenAI Chat Completions call Bulkhead makes (same prompt shape), sent
  straight to the emulator: the baseline;
- `chat`: `POST /v1/chat` (non-streaming) through Bulkhead;
- `floor`: the bare Litestar app (the framework's own ceiling on this machine).

Those three run in a closed loop at `--concurrency` (maximum throughput). Then `emulator` and
`chat` again one request at a time (`@1`), and at each `--rates` value in an open loop
(`@<rate>/s`: requests sent on a fixed schedule, whatever the server's pace). The `added`
figures are `chat` minus `emulator` under the same load; the latency target is judged in the
open loop at the highest rate, because in a closed loop latency is throughput's mirror image
(`mean latency = concurrency / rps`) and comparing a 10,000 RPS emulator with a 300 RPS chat
at concurrency 16 measures queueing, not the time Bulkhead adds.

With `--profile-seconds`, a further closed-loop `chat` run is sampled by py-spy
(`--nonblocking`) and the samples are summarised by where they fall: package of the innermost
frame, and the Bulkhead functions on the stack. Processes: Postgres, the emulator, Bulkhead
(`bulkhead serve`) and the floor (one uvicorn worker each) and the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec

from app.config import Settings
from app.db.migrate import upgrade
from app.db.pool import create_pool
from app.identity.dev_issuer import DevIssuer
from app.lifecycle.apply import apply_manifest
from app.llm.provider import CompletionRequest, ContextChunk
from app.llm.remote import build_prompt, system_prompt
from app.secrets.kek import load_master_key
from app.secrets.local import LocalSecretsBackend
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry, LlmSpec
from app.tenancy.scope import Role, TenantScope
from benchmarks import corpus, harness, report, stack, ttft
from benchmarks.targets import BODY_VARIANTS, Target, chat_target, floor_target

KEY = "sk-bench-chat-0123456789abcdef"
MODEL = "gpt-4o-mini"
TARGET_CPU_MS = 2.0
TARGET_RPS = 450.0
TARGET_ADDED_P50_ALONE_MS = 2.5
TARGET_ADDED_P99_MS = 15.0
TARGET_TTFT_ADDED_MS = 3.0
LOADED_SHARE = 0.7
"""The open-loop rate the tail target is judged at: this share of the closed-loop chat RPS."""
TTFT_REQUESTS = 300
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated requests per second") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("at least one rate, all positive")
    return rates


@dataclasses.dataclass(frozen=True, slots=True)
class ChatOptions:
    """What this benchmark adds to the harness's options."""

    profile_seconds: int
    rates: tuple[float, ...]
    trace_sampler: str
    export: bool
    baseline: Path | None = None


def parse_args(argv: list[str] | None) -> tuple[harness.RunConfig, ChatOptions]:
    """Run options (the harness's), plus this benchmark's (`ChatOptions`)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chat", description=__doc__)
    parser.add_argument("--chunks", type=int, default=5_000, help="chunks to load (5000)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants (10)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument(
        "--profile-seconds", type=int, default=0, help="py-spy sampling of chat (0: off)"
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        default=(),
        help="further open-loop rates, requests/s, comma-separated (the tail target is judged"
        f" at {LOADED_SHARE:.0%} of the closed-loop chat RPS, always measured)",
    )
    parser.add_argument(
        "--trace-sampler",
        default="",
        help="OTEL_TRACES_SAMPLER[:ARG] for Bulkhead (default: the `serve` default)",
    )
    parser.add_argument(
        "--no-export", action="store_true", help="no OTLP endpoint (nothing is exported)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. a git worktree of an earlier commit) measured in the same"
        " run, after this one, on the same database and corpus",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = parser.parse_args(argv)
    if args.tenants < 1 or args.chunks < args.tenants or args.concurrency < 1:
        parser.error("need tenants >= 1, chunks >= tenants, concurrency >= 1")
    if args.duration <= 0 or args.warmup < 0 or args.profile_seconds < 0:
        parser.error("--duration must be positive, --warmup and --profile-seconds not negative")
    config = harness.RunConfig(
        chunks=args.chunks,
        tenants=args.tenants,
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        max_requests=1_000_000,
        keep=args.keep,
    )
    options = ChatOptions(
        profile_seconds=args.profile_seconds,
        rates=args.rates,
        trace_sampler=args.trace_sampler,
        export=not args.no_export,
        baseline=args.baseline.resolve() if args.baseline else None,
    )
    return config, options


async def onboard(owner_url: str, tenant_ids: list[str], *, kek: bytes, emulator: str) -> None:
    """Benchmark tenants whose chain is the emulator, with their keys in the local backend."""
    pool = await create_pool(owner_url, min_size=1, max_size=2)
    try:
        secrets = LocalSecretsBackend(pool, kek)
        async with pool.acquire() as connection:
            for tenant_id in tenant_ids:
                entry = ChainEntry(
                    provider="openai",
                    model=MODEL,
                    secret=f"tenants/{tenant_id}/openai",
                    base_url=emulator + "/v1",
                )
                manifest = msgspec.structs.replace(
                    stack.bench_manifest(tenant_id), llm=LlmSpec(chain=(entry,))
                )
                await apply_manifest(connection, manifest, kek=kek)
        for tenant_id in tenant_ids:
            await secrets.put(
                SecretRef(tenant_id, "openai"),
                SecretValue(KEY),
                scope=TenantScope(tenant_id=tenant_id, subject="bench", roles=frozenset()),
            )
    finally:
        await pool.close()


def _at(rate: float) -> str:
    """The name suffix of an open-loop measurement at `rate` requests per second."""
    return f"@{rate:g}/s"


def emulator_target(vocabulary: corpus.Vocabulary, *, seed: int = 3) -> Target:
    """The Chat Completions call Bulkhead makes for a question with five passages."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(BODY_VARIANTS):
        passages = tuple(
            ContextChunk(i, f"doc-{i}", f"doc-{i}:0", f"Doc {i}", vocabulary.text(rng, 90), 1.0)
            for i in range(1, 6)
        )
        request = CompletionRequest(
            f"What does the handbook say about {vocabulary.query(rng)}?", passages, MODEL
        )
        messages = [
            {"role": "system", "content": system_prompt(request)},
            {"role": "user", "content": build_prompt(request)},
        ]
        bodies.append(
            json.dumps({"model": MODEL, "messages": messages, "max_completion_tokens": 1024})
        )
    return Target(
        "emulator", "emulator", "POST", "/v1/chat/completions", bodies=bodies, tokens=[KEY]
    )


def profile(
    server: stack.ServerProcess,
    target: Target,
    config: harness.RunConfig,
    seconds: int,
    name: str = "chat",
) -> tuple[str, Path | None]:
    """Sample `server` with py-spy while `target` is under load.

    Returns a summary of the samples and a flame graph (SVG, in `benchmarks/results/`).
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    report.RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = Path(tempfile.mkdtemp(prefix="bulkhead-profile-")) / "chat.txt"
    svg = report.RESULTS_DIR / f"{name}-flame-{stamp}.svg"
    # Two samplers side by side: collapsed stacks to summarise, and the flame graph.
    samplers = [
        subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                *(py_spy, "record", "--pid", str(server.pid), "--duration", str(seconds)),
                *("--rate", "200", "--nonblocking", "--nolineno", "--format", kind),
                *("--output", str(output)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for kind, output in (("raw", raw), ("flamegraph", svg))
    ]
    loaded = dataclasses.replace(config, warmup=0.5, duration=seconds + 1.0)
    harness.measure(target, server, loaded)
    for sampler in samplers:
        _, errors = sampler.communicate(timeout=seconds + 30)
        if sampler.returncode != 0:
            failed = errors.decode(errors="replace")[-500:]
            return f"py-spy failed ({sampler.returncode}): {failed}", None
    return summarise(raw.read_text(encoding="utf-8")), svg if svg.exists() else None


def _bucket(path: str) -> str:
    """`asyncpg`, `app/chat`, `asyncio`... from py-spy's (package-relative) file names."""
    path = path.split("site-packages/", 1)[-1]
    parts = path.removeprefix("<frozen ").split("/")
    if parts[0] == "app" and len(parts) > 2:
        return f"app/{parts[1]}"
    return parts[0].removesuffix(".py").removesuffix(">")


def summarise(collapsed: str, top: int = 14) -> str:
    """Where the samples fall: innermost frame's package, and Bulkhead functions on the stack."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    frames_self: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_FRAME.match(f) for f in stack_text.split(";")]
        parsed = [(m["function"], m["file"]) for m in frames if m]
        if not parsed:
            continue
        leaf[_bucket(parsed[-1][1])] += count
        function, file = parsed[-1]
        frames_self[f"{function} ({file.split('site-packages/', 1)[-1]})"] += count
        seen = {f"{file}:{function}" for function, file in parsed if file.startswith("app/")}
        for name in seen:
            inclusive[name] += count
    if not total:
        return "no samples"
    lines = [f"{total:,} samples; innermost frame by package:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in leaf.most_common(top)]
    lines.append("Bulkhead functions on the stack (inclusive):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines.append("Top frames (self time: the innermost frame):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in frames_self.most_common(5)]
    return "\n".join(lines)


class ChatStack(NamedTuple):
    """What a benchmark of the chat path starts before Bulkhead."""

    owner_url: str
    emulator: stack.ServerProcess
    tenant_ids: list[str]
    issuer: DevIssuer


def chat_stack(workdir: Path, tenants: int, cleanup: contextlib.ExitStack) -> ChatStack:
    """A migrated database, the provider emulator, `tenants` tenants chained to it, an issuer.

    Everything started is stopped (the database dropped) by `cleanup`.
    """
    owner_url = cleanup.enter_context(
        stack.postgres(workdir, server_url=os.environ.get("DATABASE_URL"))
    )
    upgrade(owner_url, app_role=harness.APP_ROLE)
    logs = workdir / "emulator-logs"
    logs.mkdir()
    emulator = stack.ServerProcess(
        "emulator",
        stack.uvicorn_command("tests.provider_emulator:ProviderEmulator", stack.free_port()),
        env=stack.clean_environment(),
        log=logs / "emulator.log",
    )
    cleanup.callback(emulator.stop)
    emulator.wait_ready("/_emulator/calls")
    tenant_ids = corpus.tenant_ids(tenants)
    kek = load_master_key(Settings(dev=True, data_dir=workdir))
    asyncio.run(onboard(owner_url, tenant_ids, kek=kek, emulator=emulator.base_url))
    issuer = DevIssuer.load_or_create(
        workdir / "dev-issuer.pem", issuer=stack.DEV_ISSUER, audience=stack.AUDIENCE
    )
    return ChatStack(owner_url, emulator, tenant_ids, issuer)


def _bulkhead_env(
    workdir: Path, options: ChatOptions, cleanup: contextlib.ExitStack
) -> dict[str, str]:
    """Telemetry as deployed: an OTLP endpoint (a discarding sink) and the sampler asked for."""
    env: dict[str, str] = {}
    if options.export:
        sink = stack.ServerProcess(
            "otlp-sink",
            stack.uvicorn_command("benchmarks.otlp_sink:app", stack.free_port()),
            env=stack.clean_environment(),
            log=workdir / "otlp-sink.log",
        )
        cleanup.callback(sink.stop)
        sink.wait_ready("/")
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.base_url
    if options.trace_sampler:
        name, _, argument = options.trace_sampler.partition(":")
        env["OTEL_TRACES_SAMPLER"] = name
        if argument:
            env["OTEL_TRACES_SAMPLER_ARG"] = argument
    return env


NEWER_MANIFEST_KEYS = (("limits", "admission"),)
"""Manifest fields newer than the baselines this benchmark is run against (at their defaults
here): an older server refuses unknown fields, so they are removed before it starts."""


async def _strip_for_baseline(owner_url: str) -> None:
    connection = await asyncpg.connect(owner_url)
    try:
        for path in NEWER_MANIFEST_KEYS:
            await connection.execute("UPDATE tenants SET manifest = manifest #- $1", list(path))
    finally:
        await connection.close()


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


@dataclasses.dataclass(frozen=True, slots=True)
class Version:
    """What one Bulkhead version measured: chat rows, the open-loop rates, first tokens."""

    label: str
    measurements: list[report.Measurement]
    rates: tuple[float, ...]
    first_token: ttft.FirstToken


def measure_version(
    label: str,
    server: stack.ServerProcess,
    chat: Target,
    config: harness.RunConfig,
    extra_rates: tuple[float, ...],
) -> Version:
    """`chat` closed loop, alone, open loop at `LOADED_SHARE` (and `extra_rates`), streamed.

    Rows are named `<label>chat...` (label empty for the version under test).
    """

    def named(target: Target, suffix: str = "") -> Target:
        return dataclasses.replace(target, name=f"{label}{target.name}{suffix}")

    measurements = [harness.measure(named(chat), server, config)]
    # One request at a time: Bulkhead's own latency, without queueing behind 15 others.
    single = dataclasses.replace(config, concurrency=1)
    measurements.append(harness.measure(named(chat, "@1"), server, single))
    # The offered load a deployment runs at (open loop): this share of the closed-loop RPS.
    rates = (float(round(LOADED_SHARE * measurements[0].result.rps)), *extra_rates)
    for rate in rates:
        paced = dataclasses.replace(config, rate=rate)
        measurements.append(harness.measure(named(chat, _at(rate)), server, paced))
    harness.say(f"measuring {label}chat time to first token, {TTFT_REQUESTS} streamed requests")
    first = ttft.measure(server.base_url, named(chat), requests=TTFT_REQUESTS)
    return Version(label, measurements, rates, first)


def measure_emulator(
    emulator: stack.ServerProcess,
    direct: Target,
    config: harness.RunConfig,
    rates: set[float],
) -> tuple[list[report.Measurement], ttft.FirstToken]:
    """The same calls sent straight to the emulator: closed loop, alone, at each rate, streamed."""
    measurements = [
        harness.measure(direct, emulator, config),
        harness.measure(
            dataclasses.replace(direct, name="emulator@1"),
            emulator,
            dataclasses.replace(config, concurrency=1),
        ),
    ]
    for rate in sorted(rates):
        paced = dataclasses.replace(config, rate=rate)
        at_rate = dataclasses.replace(direct, name=f"emulator{_at(rate)}")
        measurements.append(harness.measure(at_rate, emulator, paced))
    harness.say(f"measuring emulator time to first token, {TTFT_REQUESTS} streamed requests")
    return measurements, ttft.measure(emulator.base_url, direct, requests=TTFT_REQUESTS)


Verdicts = dict[str, tuple[float, float, str]]


def judge(
    version: Version, by_name: dict[str, Any], emulator_first: ttft.FirstToken
) -> tuple[Verdicts, dict[str, tuple[float, float]]]:
    """The five targets for `version` (value, target, sense) and its added p50/p99 per load."""
    label = version.label
    added = {
        suffix: (
            by_name[f"{label}chat{suffix}"].p50_ms - by_name[f"emulator{suffix}"].p50_ms,
            by_name[f"{label}chat{suffix}"].p99_ms - by_name[f"emulator{suffix}"].p99_ms,
        )
        for suffix in ["", "@1", *(_at(rate) for rate in version.rates)]
    }
    closed = by_name[f"{label}chat"]
    cpu_ms = 1000 * closed.server_cpu / closed.rps if closed.rps else 0.0
    verdicts: Verdicts = {
        "server_cpu_ms": (cpu_ms, TARGET_CPU_MS, "<="),
        "closed_loop_rps": (closed.rps, TARGET_RPS, ">="),
        "added_p50_ms_alone": (added["@1"][0], TARGET_ADDED_P50_ALONE_MS, "<="),
        f"added_p99_ms_at_{LOADED_SHARE:.0%}": (
            added[_at(version.rates[0])][1],
            TARGET_ADDED_P99_MS,
            "<=",
        ),
        "stream_first_token_added_p50_ms": (
            version.first_token.p50_ms - emulator_first.p50_ms,
            TARGET_TTFT_ADDED_MS,
            "<=",
        ),
    }
    return verdicts, added


def _met(value: float, target: float, sense: str) -> bool:
    return value <= target if sense == "<=" else value >= target


def run(config: harness.RunConfig, options: ChatOptions, workdir: Path) -> int:
    """Set up, measure emulator / chat / floor (and a baseline), report; tear down after."""
    say = harness.say
    with contextlib.ExitStack() as cleanup:
        owner_url, emulator, tenant_ids, issuer = chat_stack(workdir, config.tenants, cleanup)
        tokens = [
            issuer.mint(tenant=t, subject=f"bench-user-{n}", roles=[Role.CHAT], ttl_seconds=7200)
            for n, t in enumerate(tenant_ids)
        ]
        vocabulary = corpus.Vocabulary()
        quotas = dict(
            zip(tenant_ids, corpus.chunk_quota(config.chunks, config.tenants), strict=True)
        )
        asyncio.run(corpus.load_corpus(workdir / "qdrant", vocabulary, quotas, progress=say))
        env = _bulkhead_env(workdir, options, cleanup)
        servers = harness.start_servers(workdir, owner_url, cleanup, env=env)
        servers["bulkhead"].wait_ready("/readyz")
        servers["floor"].wait_ready("/floor")
        chat = chat_target(vocabulary, tokens)
        harness.preflight(servers["bulkhead"], [chat])
        floor = harness.measure(floor_target(), servers["floor"], config)
        versions = [measure_version("", servers["bulkhead"], chat, config, options.rates)]
        profiles = (
            [profile(servers["bulkhead"], chat, config, options.profile_seconds)]
            if options.profile_seconds
            else []
        )
        if options.baseline is not None:
            # One Bulkhead at a time: both open the same Qdrant Edge shard.
            servers["bulkhead"].stop()
            say(f"baseline: Bulkhead from {options.baseline}")
            asyncio.run(_strip_for_baseline(owner_url))
            before = harness.start_servers(
                workdir,
                owner_url,
                cleanup,
                floor=False,
                env=env,
                root=options.baseline,
                label="baseline",
            )["bulkhead"]
            before.wait_ready("/readyz")
            harness.preflight(before, [chat])
            versions.append(measure_version("before:", before, chat, config, options.rates))
            if options.profile_seconds:
                profiles.append(
                    profile(before, chat, config, options.profile_seconds, name="before-chat")
                )
        rates = {rate for version in versions for rate in version.rates}
        direct, direct_first = measure_emulator(
            emulator, emulator_target(vocabulary), config, rates
        )
    measurements = [
        *direct[:1],
        *(m for v in versions for m in v.measurements),
        floor,
        *direct[1:],
    ]
    say("")
    say(report.table(measurements, floor="emulator"))
    by_name = {m.target: m.result for m in measurements}
    sampler = options.trace_sampler or "the serve default"
    export = "exported to an OTLP sink" if options.export else "no OTLP endpoint"
    say(f"tracing: {sampler}, {export}")
    say(f"emulator stream@1: first token p50 {direct_first.p50_ms:.2f} ms")
    judged: dict[str, dict[str, Any]] = {}
    for version in versions:
        verdicts, added = judge(version, by_name, direct_first)
        judged[version.label or "current"] = {"verdicts": verdicts, "added_ms": added}
        name = f"{version.label}chat"
        say(f"{name}:")
        for suffix, (p50, p99) in added.items():
            load = {"": f"closed loop c{config.concurrency}", "@1": "alone"}.get(suffix, suffix)
            say(f"  {load:22} added p50 {p50:7.2f} ms, p99 {p99:8.2f} ms")
        first = version.first_token
        say(f"  stream@1: first token p50 {first.p50_ms:.2f} ms, p99 {first.p99_ms:.2f} ms")
        say("  targets:")
        for key, (value, target, sense) in verdicts.items():
            verdict = _verdict(_met(value, target, sense))
            say(f"    {key:34} {value:9.2f}  (target {sense} {target:g})  {verdict}")
    if len(versions) == 2:
        after, baseline = (judged[key]["verdicts"] for key in ("current", "before:"))
        say("after / before (same run):")
        for key, (value, _, _) in after.items():
            base = baseline[key][0]
            ratio = f"{value / base:.2f}" if base else "n/a"
            say(f"  {key:34} {base:9.2f} -> {value:9.2f}  ({ratio}x)")
    for (summary, flame), version in zip(profiles, versions, strict=False):
        say(f"profile of {version.label}chat, closed loop: {summary}")
        if flame:
            say(f"flame graph: {flame}")
    banner = report.error_banner(measurements)
    extra: dict[str, Any] = {
        "benchmark": "chat",
        "valid": banner is None,
        "config": dataclasses.asdict(config),
        "options": {k: str(v) for k, v in dataclasses.asdict(options).items()},
        "versions": judged,
        "first_token_ms": {
            "emulator": dataclasses.asdict(direct_first),
            **{v.label or "current": dataclasses.asdict(v.first_token) for v in versions},
        },
        "targets_met": {
            key: _met(*verdict) for key, verdict in judged["current"]["verdicts"].items()
        },
        "profiles": [
            {"version": v.label or "current", "summary": summary, "flame_graph": str(flame)}
            for (summary, flame), v in zip(profiles, versions, strict=False)
        ],
        "environment": harness.environment(bool(os.environ.get("DATABASE_URL"))),
    }
    say(f"results: {report.write_json(extra, measurements)}")
    if banner:
        say(banner)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chat benchmark; 0 when every request succeeded."""
    config, options = parse_args(argv)
    return harness.run_in_scratch(
        "bulkhead-bench-chat-", keep=config.keep, body=lambda workdir: run(config, options, workdir)
    )


if __name__ == "__main__":
    sys.exit(main())
