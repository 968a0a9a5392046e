"""HTTP load generator, run in its own process (`python -m benchmarks.loadgen`).

It reads one `LoadPlan` as JSON on stdin and writes one `LoadResult` as JSON on stdout.

- Closed loop (`rate` 0, the default): `concurrency` workers each hold one keep-alive HTTP/1.1
  connection and send their next request as soon as the previous answer is read (like `wrk`).
  Throughput and latency are tied (`rps ~= concurrency / mean latency`).
- Open loop (`rate` > 0): requests are sent on a fixed schedule, one every `1 / rate` seconds,
  whatever the server's pace, each on an idle keep-alive connection (a new one when none is
  idle, up to `max_connections`). Latency is taken from the *scheduled* send time, so a
  request that waited for a connection, or behind a late timer, counts that wait (no
  coordinated omission). Two servers offered the same rate can be compared latency for
  latency; an overloaded server shows up as completed rps below `rate` and growing latency.

Requests started (or scheduled) during the warm-up are not counted. The run is bounded by both
its duration and `max_requests`.

The default client is `benchmarks.http1` (see there for why); `client="httpx"` uses
`httpx.AsyncClient` instead, with a pool of `concurrency` connections, for cross-checking.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from benchmarks import http1

REQUEST_TIMEOUT_SECONDS = 30.0
ERROR_SAMPLES = 5
ERROR_BODY_CHARS = 2_000


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to send, how hard and for how long.

    Attributes:
        base_url: Server root, e.g. `http://127.0.0.1:8000`.
        method: HTTP method.
        path: Request path.
        bodies: JSON bodies, used in rotation (empty: no body).
        tokens: Bearer tokens, used in rotation (empty: no Authorization header).
        concurrency: Requests in flight at any time (and pooled connections).
        warmup_seconds: Load applied before measuring.
        duration_seconds: Measured load.
        max_requests: Hard cap on requests sent, warm-up included.
        server_pid: The serving process, whose CPU time is sampled while measuring.
        client: `raw` (benchmarks.http1) or `httpx` (closed loop only).
        rate: Open loop: requests per second sent on a fixed schedule (0: closed loop).
        max_connections: Open loop: connections open at most (requests beyond wait for one).
    """

    base_url: str
    method: str
    path: str
    bodies: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    concurrency: int = 16
    warmup_seconds: float = 2.0
    duration_seconds: float = 10.0
    max_requests: int = 1_000_000
    server_pid: int | None = None
    client: Literal["raw", "httpx"] = "raw"
    rate: float = 0.0
    max_connections: int = 256


@dataclass(slots=True)
class LoadResult:
    """Measured figures of one plan (latencies in milliseconds)."""

    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    statuses: dict[str, int]
    error_samples: list[str]
    client_cpu: float
    """Load-generator CPU time over wall time while measuring (1.0 = one core saturated)."""
    server_cpu: float
    """The same for the server process (0.0 when no `server_pid` was given)."""
    capped: bool
    """`max_requests` ended the run before its duration did."""


def process_cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time a process has used (this one when `pid` is None)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class _Run:
    plan: LoadPlan
    measure_from: float
    stop_at: float
    issued: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    last_done: float = 0.0

    def next_request(self) -> int | None:
        """The next request's sequence number, or None when the run is over."""
        if time.perf_counter() >= self.stop_at or self.issued >= self.plan.max_requests:
            return None
        self.issued += 1
        return self.issued - 1

    def record(self, started: float, status: str, detail: str | None) -> None:
        """Count a finished request (`detail` is the error text of a failed one)."""
        done = time.perf_counter()
        if started < self.measure_from:
            return
        self.latencies.append((done - started) * 1000)
        self.statuses[status] += 1
        self.last_done = max(self.last_done, done)
        if detail is not None and len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(f"{status}: {detail[:ERROR_BODY_CHARS]}")


class _CpuWindow:
    """CPU used by this process and the server between the end of warm-up and the end of load."""

    def __init__(self, server_pid: int | None) -> None:
        self._server_pid = server_pid
        self._start: tuple[float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float]:
        server = process_cpu_seconds(self._server_pid) if self._server_pid else 0.0
        return time.perf_counter(), process_cpu_seconds(), server

    async def open_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._start = self._sample()

    def close(self) -> tuple[float, float]:
        """(client, server) CPU seconds per wall second; zeros if the window never opened."""
        if self._start is None:
            return 0.0, 0.0
        end = self._sample()
        wall, client, server = (end[i] - self._start[i] for i in range(3))
        return (client / wall, server / wall) if wall > 0 else (0.0, 0.0)


def _headers(plan: LoadPlan) -> list[dict[str, str]]:
    base = {"content-type": "application/json"} if plan.bodies else {}
    return [{**base, "authorization": f"Bearer {t}"} for t in plan.tokens] or [base]


def _bodies(plan: LoadPlan) -> list[bytes]:
    return [body.encode() for body in plan.bodies] or [b""]


async def _raw_worker(run: _Run, requests: list[bytes]) -> None:
    url = urlsplit(run.plan.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    connection: http1.Connection | None = None
    try:
        while (k := run.next_request()) is not None:
            started = time.perf_counter()
            try:
                if connection is None or not connection.reusable:
                    if connection is not None:
                        connection.close()
                    connection = await http1.Connection.open(host, port)
                async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                    status, body = await connection.request(requests[k % len(requests)])
            except OSError as exc:  # TimeoutError and ConnectionError included
                if connection is not None:
                    connection.close()
                run.record(started, type(exc).__name__, str(exc) or "timed out")
                continue
            ok = 200 <= status < 300
            run.record(started, str(status), None if ok else body.decode("utf-8", "replace"))
    finally:
        if connection is not None:
            connection.close()


async def _httpx_worker(run: _Run, client: httpx.AsyncClient) -> None:
    plan = run.plan
    bodies, headers = _bodies(plan), _headers(plan)
    url = plan.base_url + plan.path
    while (k := run.next_request()) is not None:
        started = time.perf_counter()
        try:
            response = await client.request(
                plan.method,
                url,
                content=bodies[k % len(bodies)] or None,
                headers=headers[k % len(headers)],
            )
        except httpx.HTTPError as exc:
            run.record(started, type(exc).__name__, str(exc))
            continue
        detail = None if response.is_success else response.text
        run.record(started, str(response.status_code), detail)


async def _paced_request(run: _Run, request: bytes, scheduled: float, pool: _Connections) -> None:
    async with pool.slots:
        connection = pool.idle.pop() if pool.idle else None
        try:
            if connection is None or not connection.reusable:
                if connection is not None:
                    connection.close()
                connection = await http1.Connection.open(pool.host, pool.port)
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                status, body = await connection.request(request)
        except OSError as exc:
            if connection is not None:
                connection.close()
            run.record(scheduled, type(exc).__name__, str(exc) or "timed out")
            return
        pool.idle.append(connection)
    ok = 200 <= status < 300
    run.record(scheduled, str(status), None if ok else body.decode("utf-8", "replace"))


@dataclass(slots=True)
class _Connections:
    host: str
    port: int
    slots: asyncio.Semaphore
    idle: list[http1.Connection] = field(default_factory=list)


async def _paced(run: _Run, requests: list[bytes]) -> None:
    """Send request k at `start + k / rate`, without waiting for earlier answers."""
    plan = run.plan
    url = urlsplit(plan.base_url)
    pool = _Connections(
        url.hostname or "127.0.0.1", url.port or 80, asyncio.Semaphore(plan.max_connections)
    )
    interval = 1.0 / plan.rate
    start = time.perf_counter()
    in_flight: set[asyncio.Task[None]] = set()
    try:
        while (k := run.next_request()) is not None:
            scheduled = start + k * interval
            if scheduled >= run.stop_at:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(
                _paced_request(run, requests[k % len(requests)], scheduled, pool)
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    finally:
        for connection in pool.idle:
            connection.close()


def _raw_requests(plan: LoadPlan) -> list[bytes]:
    """Every (token, body) pairing the run cycles through, serialised once up front."""
    host = urlsplit(plan.base_url).netloc
    bodies, headers = _bodies(plan), _headers(plan)
    return [
        http1.build_request(
            plan.method, host, plan.path, headers[n % len(headers)], bodies[n % len(bodies)]
        )
        for n in range(max(len(bodies), len(headers)))
    ]


async def generate_load(plan: LoadPlan) -> LoadResult:
    """Apply `plan` and measure it."""
    now = time.perf_counter()
    run = _Run(
        plan=plan,
        measure_from=now + plan.warmup_seconds,
        stop_at=now + plan.warmup_seconds + plan.duration_seconds,
    )
    window = _CpuWindow(plan.server_pid)
    marker = asyncio.create_task(window.open_after(plan.warmup_seconds))
    if plan.client == "httpx":
        if plan.rate > 0:
            raise ValueError("the open loop (rate > 0) uses the raw client only")
        limits = httpx.Limits(
            max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency
        )
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS), http1=True, http2=False
        ) as client:
            await asyncio.gather(*(_httpx_worker(run, client) for _ in range(plan.concurrency)))
            client_cpu, server_cpu = window.close()
    elif plan.rate > 0:
        await _paced(run, _raw_requests(plan))
        client_cpu, server_cpu = window.close()
    else:
        requests = _raw_requests(plan)
        await asyncio.gather(*(_raw_worker(run, requests) for _ in range(plan.concurrency)))
        client_cpu, server_cpu = window.close()
    marker.cancel()
    latencies = sorted(run.latencies)
    seconds = max(run.last_done - run.measure_from, 1e-9) if latencies else 0.0
    errors = sum(n for status, n in run.statuses.items() if not status.startswith("2"))
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        rps=len(latencies) / seconds if seconds else 0.0,
        p50_ms=percentile(latencies, 0.50),
        p90_ms=percentile(latencies, 0.90),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else 0.0,
        mean_ms=sum(latencies) / len(latencies) if latencies else 0.0,
        statuses=dict(run.statuses),
        error_samples=run.error_samples,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
        capped=run.issued >= plan.max_requests,
    )


def _run_loop(plan: LoadPlan) -> LoadResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] ships it
        return asyncio.run(generate_load(plan))
    return uvloop.run(generate_load(plan))


def main() -> int:
    """Read a plan from stdin, apply it, print the result as JSON."""
    raw: dict[str, Any] = json.load(sys.stdin)
    result = _run_loop(LoadPlan(**raw))
    json.dump(asdict(result), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
