"""A second Bulkhead process on a loopback port, for tests that need real HTTP concurrency.

Litestar's AsyncTestClient runs each request to completion through a blocking portal, so two
requests never overlap; this server does, as production does. It shares the test database,
master key and dev issuer key with the in-process app (tokens and tenants work on both), and
has its own Qdrant Edge shard (a shard has exactly one owner process).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.identity.dev_issuer import DevIssuer
from tests.servers import free_port, wait_until_ready

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def served_bulkhead(
    settings: Settings,
    data_dir: Path,
    *,
    command: list[str],
    name: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run `command` (a server of this app on `{port}`) against the test database; its URL.

    The process shares the test database, master key and dev issuer key, has its own data
    dir (and so its own Qdrant Edge shard), and is stopped on exit.
    """
    data_dir.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHEAD_", "OTEL_"))}
    env |= {
        "DATABASE_URL": str(settings.db.url),
        "BULKHEAD_DEV": "true",
        "BULKHEAD_DATA_DIR": str(data_dir),
        "BULKHEAD_TENANTS_DIR": str(settings.tenants_dir),
        "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(settings.master_key_path.resolve()),
        "BULKHEAD_AUTH__DEV_SIGNING_KEY_FILE": str(settings.dev_signing_key_path.resolve()),
        **(extra_env or {}),
    }
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed arguments, our own app
            [part.format(port=port) for part in command],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(process, base, log_path, timeout=60, name=name)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


UVICORN = [
    sys.executable,
    "-m",
    "uvicorn",
    "--factory",
    "app.main:create_app",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--no-access-log",
    "--log-level",
    "warning",
]


@pytest.fixture(scope="session")
def live_server(
    settings: Settings, tmp_root: Path, kek: bytes, dev_issuer: DevIssuer
) -> Iterator[str]:
    """Base URL of a uvicorn-served Bulkhead (dev mode, no demo corpus), stopped afterwards."""
    with serve_replica(settings, tmp_root / "live-server") as base:
        yield base


@contextmanager
def serve_replica(settings: Settings, data_dir: Path) -> Iterator[str]:
    """Another Bulkhead process on the test database, with its own data dir (and vector shard).

    Needs the `kek` and `dev_issuer` fixtures to have run (it reuses their key files).
    """
    with served_bulkhead(settings, data_dir, command=UVICORN, name="live server") as base:
        yield base


async def wait_until_known(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Wait (up to 10 s) until the live server has seen a new tenant (its NOTIFY)."""
    deadline = time.monotonic() + 10
    while (await http.get("/v1/documents", headers=headers)).status_code == 401:
        if time.monotonic() > deadline:
            pytest.fail("the live server never learnt about the tenant")
        await asyncio.sleep(0.05)
