"""`bulkhead keys`: the operator's create / list / rotate / revoke, against the real database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from app import config
from app.cli import main
from app.config import Settings
from app.identity.api_keys import parse_key
from tests.conftest import TenantFactory


async def _row(database_url: str, key_id: str) -> asyncpg.Record | None:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchrow(
            "SELECT tenant_id, scopes, revoked_at, replaced_by, expires_at FROM api_keys"
            " WHERE id = $1",
            key_id,
        )
    finally:
        await connection.close()


def test_keys_cli_lifecycle(
    settings: Settings,
    database_url: str,
    make_tenant: TenantFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(config, "get_settings", lambda: settings)
    tenant = asyncio.run(make_tenant("cli"))
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["keys", "create", "--tenant", tenant, "--name", "etl", "--scopes", "ingest,search"],
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    parsed = parse_key(key)
    assert parsed is not None
    key_id = parsed[0]
    row = asyncio.run(_row(database_url, key_id))
    assert row is not None
    assert row["tenant_id"] == tenant
    assert sorted(row["scopes"]) == ["ingest", "search"]

    listed = runner.invoke(main, ["keys", "list", "--tenant", tenant])
    assert listed.exit_code == 0
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [key_id]
    assert parsed[1] not in listed.output

    rotated = runner.invoke(main, ["keys", "rotate", "--tenant", tenant, key_id, "--grace", "60"])
    assert rotated.exit_code == 0, rotated.output
    new_id = parse_key(rotated.stdout.strip())
    assert new_id is not None
    row = asyncio.run(_row(database_url, key_id))
    assert row is not None
    assert row["replaced_by"] == new_id[0]
    assert row["expires_at"] is not None

    revoked = runner.invoke(main, ["keys", "revoke", "--tenant", tenant, new_id[0]])
    assert revoked.exit_code == 0
    row = asyncio.run(_row(database_url, new_id[0]))
    assert row is not None
    assert row["revoked_at"] is not None

    other = runner.invoke(main, ["keys", "revoke", "--tenant", "no-such-tenant", key_id])
    assert other.exit_code != 0
    assert "no tenant" in other.output

    path = tmp_path / "signing.pem"
    assert runner.invoke(main, ["keys", "signing-key", str(path)]).exit_code == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert runner.invoke(main, ["keys", "signing-key", str(path)]).exit_code != 0
