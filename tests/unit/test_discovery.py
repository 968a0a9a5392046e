"""Finding an instance: which data dir a command means, and whether its Postgres runs.

The running server is read from the `postmaster.pid` Postgres writes (tests/e2e/
test_operator_discovery.py does it against a real `bulkhead dev`); here, the cases a real
server rarely shows on demand: a server still starting, and a file left by a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from app.config import Settings
from app.db.discovery import NoDevDatabase, dev_database, locate_data_dir, running_server_url


def _default_settings() -> Settings:
    settings = Settings()
    assert "data_dir" not in settings.model_fields_set, "BULKHEAD_DATA_DIR leaked into the test"
    return settings


def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULKHEAD_DATA_DIR", raising=False)
    project = tmp_path / "project"
    (project / ".bulkhead").mkdir(parents=True)
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    default = _default_settings()
    # The nearest `.bulkhead` upwards, as git finds `.git` ...
    assert locate_data_dir(None, default, cwd=deep) == project / ".bulkhead"
    # ... or, with none, the default in the working directory.
    assert locate_data_dir(None, default, cwd=tmp_path) == tmp_path / ".bulkhead"
    # BULKHEAD_DATA_DIR (a set field) wins over the walk, --data-dir over both.
    configured = Settings(data_dir=tmp_path / "configured")
    assert locate_data_dir(None, configured, cwd=deep) == tmp_path / "configured"
    explicit = tmp_path / "explicit"
    assert locate_data_dir(explicit, configured, cwd=deep) == explicit


def _pidfile(pgdata: Path, pid: int, status: str) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    lines = [str(pid), str(pgdata), "1700000000", "5433", str(pgdata), "", "0 0", status]
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_a_ready_server_gives_its_socket_url(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    _pidfile(pgdata, os.getpid(), "ready")
    url = running_server_url(pgdata, "bulkhead")
    assert url is not None
    parts = urlsplit(url)
    assert (parts.username, parts.path) == ("postgres", "/bulkhead")
    assert parse_qs(parts.query) == {"host": [str(pgdata)], "port": ["5433"]}


def test_a_starting_server_is_not_used(tmp_path: Path) -> None:
    _pidfile(tmp_path / "pg", os.getpid(), "starting")
    assert running_server_url(tmp_path / "pg", "bulkhead") is None


def test_a_pidfile_left_by_a_crash_is_not_a_running_server(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    _pidfile(tmp_path / "pg", int(gone.stdout), "ready")
    assert running_server_url(tmp_path / "pg", "bulkhead") is None


def test_no_instance_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NoDevDatabase, match=r"set DATABASE_URL, or run `bulkhead dev`"):
        dev_database(tmp_path / ".bulkhead")
