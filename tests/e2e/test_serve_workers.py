"""`bulkhead serve --workers N` as an operator runs it: a subprocess, its workers seen by the OS.

The vector store is the Qdrant REST facade (tests/qdrant_facade.py: qdrant-client's local mode
behind Qdrant's REST shape, in its own process), the stand-in for a Qdrant server, which cannot
run here. Postgres is the test database (migrated by the real migrations); the service runs in
dev mode without a Qdrant cluster key, so no per-tenant Qdrant JWT is minted (the facade
checks none). Which worker answered is read from the OS (psutil: the server side of each test
connection belongs to one worker process), not from anything the service says.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from app.config import Settings
from app.identity.dev_issuer import DevIssuer
from app.tenancy.scope import Role
from tests.conftest import TenantFactory
from tests.servers import free_port, wait_until_ready

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DRAIN_SECONDS = 2
STOP_BOUND_SECONDS = 20.0
"""SIGTERM to exit: the drain (2 s), the audit flush (2 s), closing pools (at most 5 s each,
idle here) and the workers' exits, with room for a loaded machine."""
START_FAILURE_BOUND_SECONDS = 90.0


def _environment(settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    """The test database, master key and dev issuer key; a data dir and empty tenants dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tenants_dir = data_dir / "no-tenants"
    tenants_dir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHEAD_", "OTEL_"))}
    return env | {
        "DATABASE_URL": str(settings.db.url),
        "BULKHEAD_DEV": "true",
        "BULKHEAD_HOST": "127.0.0.1",
        "BULKHEAD_DATA_DIR": str(data_dir),
        "BULKHEAD_TENANTS_DIR": str(tenants_dir),
        "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(settings.master_key_path.resolve()),
        "BULKHEAD_AUTH__DEV_SIGNING_KEY_FILE": str(settings.dev_signing_key_path.resolve()),
        **extra,
    }


def _serve(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "serve", *args]


@dataclass
class Served:
    """A running `bulkhead serve --workers 2`."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        """Its URL."""
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[psutil.Process]:
        """The worker processes (multiprocessing's spawned children, not its resource tracker)."""
        children = psutil.Process(self.process.pid).children()
        return [c for c in children if "spawn_main" in " ".join(_cmdline(c))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
async def tenant(make_tenant: TenantFactory) -> str:
    """A tenant onboarded before the server starts (every worker loads it at start-up)."""
    return await make_tenant("workers")


@pytest.fixture
def served(
    settings: Settings,
    tmp_path: Path,
    kek: bytes,
    dev_issuer: DevIssuer,
    qdrant_facade: str,
    tenant: str,
) -> Iterator[Served]:
    """`bulkhead serve --workers 2` on the facade; killed at the end if a test left it running."""
    port = free_port()
    env = _environment(
        settings,
        tmp_path / "data",
        BULKHEAD_PORT=str(port),
        BULKHEAD_VECTORS__BACKEND="qdrant",
        BULKHEAD_VECTORS__QDRANT__URL=qdrant_facade,
        # The facade serves the whole test run: this server's collections are its own.
        BULKHEAD_VECTORS__QDRANT__COLLECTION_PREFIX=f"w{uuid.uuid4().hex[:10]}",
        BULKHEAD_SHUTDOWN__DRAIN_SECONDS=str(DRAIN_SECONDS),
        BULKHEAD_SHUTDOWN__AUDIT_FLUSH_SECONDS="2",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            _serve("--workers", "2"), cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        served = Served(process, port, log)
        try:
            wait_until_ready(process, served.base, log, timeout=90, name="serve --workers 2")
            yield served
        finally:
            if process.poll() is None:
                for worker in served.workers():
                    worker.kill()
                process.kill()
                process.wait()


async def _search(
    port: int, token: str, query: str
) -> tuple[int, int, bytes, asyncio.StreamWriter]:
    """POST /v1/search on a new connection, left open; (client port, status, body, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"query": query, "top_k": 5}).encode()
    head = (
        f"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    async with asyncio.timeout(15):
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines if ": " in line)
        answer = await reader.readexactly(int(headers["content-length"]))
    client_port = writer.get_extra_info("sockname")[1]
    return client_port, int(status_line.split()[1]), answer, writer


def _owner(workers: list[psutil.Process], server_port: int, client_port: int) -> int | None:
    """The worker holding the server side of the connection from `client_port`."""
    for worker in workers:
        for connection in worker.net_connections(kind="tcp"):
            server_side = connection.laddr and connection.laddr.port == server_port
            if server_side and connection.raddr and connection.raddr.port == client_port:
                return worker.pid
    return None


async def _answered_by(served: Served, token: str, wanted: set[int]) -> set[int]:
    """Search on new connections until each of `wanted` (worker pids) answered one; the pids.

    The kernel hands each new connection to whichever worker accepts it first, and a worker
    just started is still opening its pools, so this keeps opening connections (for at most
    60 s). Each answer must be a 200 that finds the document.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while not wanted <= seen and time.monotonic() < deadline:
        client_port, status, answer, writer = await _search(served.port, token, "parking gate code")
        try:
            assert status == 200, answer
            assert [hit["document_id"] for hit in json.loads(answer)["results"]] == ["parking"]
            owner = _owner(served.workers(), served.port, client_port)
        finally:
            writer.close()
        if owner is not None:
            seen.add(owner)
        await asyncio.sleep(0.02)
    return seen


async def _wait_for(condition: str, check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:g} s: {condition}")
        await asyncio.sleep(0.1)


async def test_two_workers_serve_are_replaced_when_killed_and_drain_on_sigterm(
    served: Served, tenant: str, dev_issuer: DevIssuer
) -> None:
    workers = served.workers()
    assert len(workers) == 2, [_cmdline(w) for w in workers]
    roles = [Role.SEARCH, Role.INGEST]
    token = dev_issuer.mint(tenant=tenant, subject="alice", roles=roles)
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        ingested = await http.post(
            "/v1/documents",
            json={
                "documents": [
                    {"id": "parking", "title": "Parking", "text": "The parking gate code is 8086."}
                ]
            },
            headers={"Authorization": f"Bearer {token}"},
        )
    assert ingested.status_code == 201, ingested.text

    # Both workers answer, each from its own app (the document went in through one of them).
    pids = {w.pid for w in workers}
    assert await _answered_by(served, token, pids) == pids

    # A worker that dies is replaced by a fresh one, which serves too.
    victim = workers[0]
    victim.kill()

    def replaced() -> bool:
        now = {w.pid for w in served.workers()}
        return len(now) == 2 and victim.pid not in now

    await _wait_for("a replacement worker", replaced, seconds=30)
    (replacement,) = {w.pid for w in served.workers()} - pids
    assert replacement in await _answered_by(served, token, {replacement})

    # SIGTERM to the parent reaches every worker: each drains and closes, then the parent
    # exits 0.
    final = served.workers()
    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    await _wait_for(
        "serve exits after SIGTERM",
        lambda: served.process.poll() is not None,
        seconds=STOP_BOUND_SECONDS,
    )
    assert served.process.returncode == 0, served.log.read_text()
    assert time.monotonic() - started < STOP_BOUND_SECONDS
    log = served.log.read_text()
    for worker in final:
        assert f"Finished server process [{worker.pid}]" in log, log
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize(
    ("backend", "why"),
    [
        ({}, "the embedded Qdrant Edge shard"),
        ({"BULKHEAD_VECTORS__BACKEND": "qdrant"}, "qdrant-client's local mode"),
    ],
    ids=["edge", "qdrant-local-mode"],
)
def test_several_workers_are_refused_without_a_qdrant_server(
    settings: Settings, tmp_path: Path, kek: bytes, backend: dict[str, str], why: str
) -> None:
    env = _environment(
        settings, tmp_path / "data", BULKHEAD_PORT=str(free_port()), BULKHEAD_WORKERS="2"
    )
    refused = subprocess.run(  # noqa: S603 - our own CLI
        _serve(),
        cwd=REPO,
        env=env | backend,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    message = " ".join(refused.stderr.split())
    assert f"--workers 2: the vector backend is {why}" in message, refused.stderr
    assert "BULKHEAD_VECTORS__QDRANT__URL" in message
    assert "Started parent process" not in refused.stderr + refused.stdout


def test_a_worker_that_cannot_start_stops_serve_with_an_error(
    settings: Settings, tmp_path: Path, kek: bytes, qdrant_facade: str
) -> None:
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    env = _environment(
        settings,
        tmp_path / "data",
        BULKHEAD_PORT=str(free_port()),
        BULKHEAD_VECTORS__BACKEND="qdrant",
        BULKHEAD_VECTORS__QDRANT__URL=qdrant_facade,
    )
    started = time.monotonic()
    failed = subprocess.run(  # noqa: S603 - our own CLI
        _serve("--workers", "2"),
        cwd=REPO,
        env=env | {"DATABASE_URL": nobody},
        capture_output=True,
        text=True,
        timeout=START_FAILURE_BOUND_SECONDS,
        check=False,
    )
    assert failed.returncode != 0, failed.stderr
    assert time.monotonic() - started < START_FAILURE_BOUND_SECONDS
    assert "failed to start" in failed.stderr, failed.stderr[-3000:]
