"""Operator commands on a `bulkhead dev` instance, found from its data dir, no DATABASE_URL.

A developer with `bulkhead dev` running opens another terminal, in any directory, and runs
`bulkhead keys`, `audit verify` or `token` with `--data-dir`: the commands reach the running
instance's own database (a key made by the CLI works on its API at once). With dev stopped, a
command starts the instance's Postgres for its own duration, and it is stopped again after.
A configured `DATABASE_URL` still wins over the data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.outage import (
    DevProcess,
    dev_instance,
    handle_pids,
    postmaster_pid,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def root() -> Iterator[Path]:
    # Not pytest's tmp_path: its 0700 parents keep out the server's own system user (as root).
    with tempfile.TemporaryDirectory(prefix="bulkhead-ops-") as directory:
        yield Path(directory)


@pytest.fixture
def dev(root: Path) -> Iterator[DevProcess]:
    with dev_instance(root) as process:
        yield process


def _bulkhead(
    *args: str, cwd: Path, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`bulkhead ARGS` in `cwd` with no Bulkhead configuration in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKHEAD_")}
    env.pop("DATABASE_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _search(base: str, credential: str) -> int:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.post(
            "/v1/search",
            json={"query": "vacation days"},
            headers={"Authorization": f"Bearer {credential}"},
        )
    return response.status_code


async def test_operator_commands_find_a_running_then_a_stopped_dev_instance(
    dev: DevProcess, root: Path, database_url: str
) -> None:
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    data = str(dev.data_dir)
    pgdata = dev.data_dir / "pg"
    dev.start()

    created = _bulkhead(
        "keys", "create", "--tenant", "demo", "--name", "ops", "--scopes", "search",
        "--data-dir", data, cwd=elsewhere,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = json.loads(created.stderr.strip().splitlines()[-1])["id"]
    assert await _search(dev.base, key) == 200, "the key is not in the running instance's DB"

    token = _bulkhead(
        "token", "--tenant", "demo", "--user", "alice", "--data-dir", data, cwd=elsewhere
    )
    assert token.returncode == 0, token.stderr
    assert await _search(dev.base, token.stdout.strip()) == 200

    verified = _bulkhead("audit", "verify", "--tenant", "demo", "--data-dir", data, cwd=elsewhere)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("demo: ")
    assert "rows verified" in verified.stdout

    # DATABASE_URL wins: the machine's test database has no tenant `demo`.
    configured = _bulkhead(
        "audit", "verify", "--tenant", "demo", "--data-dir", data, cwd=elsewhere,
        database_url=database_url,
    )  # fmt: skip
    assert configured.returncode == 1
    assert "no tenant 'demo'" in configured.stderr

    dev.signal(signal.SIGTERM)
    assert await asyncio.to_thread(dev.wait, 30) == 0

    async def postgres_gone() -> bool:
        return postmaster_pid(pgdata) is None

    await wait_for(postgres_gone, 30, "dev's Postgres to stop with it")

    listed = _bulkhead("keys", "list", "--tenant", "demo", "--data-dir", data, cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert key_id in [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert "is stopped: its Postgres runs for this command" in listed.stderr
    # The server the command started went with it, and left no handle behind.
    assert postmaster_pid(pgdata) is None
    assert handle_pids(pgdata) == []


def test_without_a_dev_instance_the_command_says_what_to_do(root: Path) -> None:
    result = _bulkhead("keys", "list", "--tenant", "demo", cwd=root)
    assert result.returncode == 1
    assert "no database: set DATABASE_URL, or run `bulkhead dev`" in result.stderr
    assert str(root.resolve() / ".bulkhead") in result.stderr
