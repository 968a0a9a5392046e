"""`bulkhead` as an operator runs it: CLI commands and a `bulkhead dev` server, as subprocesses.

Each stack has its own database on the test Postgres server, its own data dir (master key,
dev issuer, Qdrant Edge shard) and its own tenants dir.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import asyncpg
import httpx
import uvicorn

from app.config import Settings
from app.db.embedded import ensure_database
from app.db.urls import with_database
from app.main import create_app
from app.secrets.local import LocalSecretsBackend
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry, LlmSpec
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory
from tests.servers import free_port, wait_until_ready

DOC = "## Hotels\nHotel stays are reimbursed up to 180 euros per night in every city.\n"

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def served_in_thread(settings: Settings, name: str) -> Iterator[str]:
    """Bulkhead with `settings` on uvicorn in a background thread; yields its base URL.

    Its own event loop, pool and vector shard (under `settings.vectors.path`); requests overlap
    as in production, which Litestar's in-process test client does not allow.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{name}: bulkhead did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def served_tenant(
    http: httpx.AsyncClient,
    tenant: str,
    chain: tuple[ChainEntry, ...],
    keys: dict[str, str],
    *,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
    kek: bytes,
    auth: AuthHeaders,
) -> str:
    """Onboard `tenant` with `chain` and its provider `keys`, and ingest the travel document.

    Returns once the served app (`http`) knows the tenant; returns the tenant id.
    """
    await make_tenant(tenant_id=tenant, llm=LlmSpec(chain=chain))
    secrets = LocalSecretsBackend(app_pool, kek)
    ops = TenantScope(tenant_id=tenant, subject="ops", roles=frozenset())
    for provider, key in keys.items():
        await secrets.put(SecretRef(tenant, provider), SecretValue(key), scope=ops)
    # The served app learns of the tenant by NOTIFY; until then its tokens are refused.
    async with asyncio.timeout(5):
        while (await http.get("/v1/conversations", headers=auth(tenant))).status_code == 401:  # noqa: ASYNC110 - polling another server
            await asyncio.sleep(0.05)
    ingested = await http.post(
        "/v1/documents",
        json={"documents": [{"id": "travel", "title": "Travel", "text": DOC}]},
        headers=auth(tenant),
    )
    assert ingested.status_code == 201, ingested.text
    return tenant


class DevStack:
    """One Bulkhead deployment on the embedded default, driven through its CLI."""

    def __init__(self, server_url: str, root: Path, extra_env: dict[str, str] | None = None):
        name = f"bulkhead_e2e_{uuid.uuid4().hex[:10]}"
        asyncio.run(ensure_database(server_url, name))
        self.database_url = with_database(server_url, name)
        self.data_dir = root / "data"
        self.tenants_dir = root / "tenants"
        self.tenants_dir.mkdir(parents=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHEAD_", "OTEL_"))}
        self.env = env | {
            "DATABASE_URL": self.database_url,
            "BULKHEAD_DATA_DIR": str(self.data_dir),
            "BULKHEAD_TENANTS_DIR": str(self.tenants_dir),
            # The operator's commands run beside `bulkhead dev`, which generates the master key.
            "BULKHEAD_DEV": "1",
        }
        self.env |= extra_env or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `bulkhead ARGS` to completion."""
        return subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "app.cli", *args],
            cwd=REPO,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        """Start `bulkhead dev` and wait (up to 90 s) until /readyz answers 200."""
        self._log = self.log_path.open("w")
        self._process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "app.cli", "dev", "--port", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until_ready(self._process, self.base, self.log_path, timeout=90, name="bulkhead dev")

    def stop(self) -> None:
        """Stop the server (SIGINT, then kill after 30 s)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
