"""`bulkhead tenants apply` against the real database, secrets store and provider emulator.

The CLI runs in a thread (it owns its event loop); the app in this loop sees the result.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner, Result
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.cli import main
from app.config import Settings, get_settings
from tests.conftest import wait_for_tenant
from tests.provider_emulator import EmulatorServer

Client = AsyncTestClient[Litestar]


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    assert settings.db.url is not None
    for key, value in {
        "DATABASE_URL": settings.db.url,
        "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(settings.master_key_path),
        "BULKHEAD_DATA_DIR": str(settings.data_dir),
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def cli(args: list[str], *, stdin: str | None = None) -> Result:
    """Run `bulkhead ARGS` in a thread (the CLI runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, args, input=stdin)


def manifest_yaml(
    tenant: str, emulator_url: str, *, rpm: int = 600, model: str = "gpt-4o-mini", extra: str = ""
) -> str:
    return f"""\
id: {tenant}
name: Ops test {tenant}
identity:
  issuers:
    - issuer: urn:bulkhead:dev-issuer
      audience: bulkhead
      tenant_claim: tenant
      tenant_claim_value: {tenant}
llm:
  chain:
    - provider: openai
      model: {model}
      secret: tenants/{tenant}/openai
      base_url: {emulator_url}/v1
{extra}    - provider: local
limits:
  requests_per_minute: {rpm}
"""


async def test_apply_creates_once_prints_diff_checks_and_verifies_keys(
    cli_env: None,
    tmp_path: Path,
    emulator: EmulatorServer,
    app: Litestar,
    client: Client,
    owner_pool: asyncpg.Pool,
) -> None:
    tenant = f"ops-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{tenant}.yaml"
    path.write_text(manifest_yaml(tenant, emulator.url))

    dry = await cli(["tenants", "apply", "--dry-run", str(path)])
    assert dry.exit_code == 0, dry.output
    assert f"{tenant}: would create" in dry.stderr
    assert await owner_pool.fetchval("SELECT count(*) FROM tenants WHERE id = $1", tenant) == 0

    created = await cli(["tenants", "apply", str(path)])
    assert created.exit_code == 0, created.output
    assert f"{tenant}: create" in created.stderr
    assert f'+ llm.chain[0].secret: "tenants/{tenant}/openai"' in created.stderr
    assert "+ limits.requests_per_minute: 600" in created.stderr
    # A new tenant cannot have secrets yet: reported with the command that stores them.
    assert "MISSING" in created.stderr
    assert f"bulkhead secrets put tenants/{tenant}/openai" in created.stderr
    admin_key = created.stdout.strip()
    assert admin_key.startswith("bk_")
    assert "\n" not in admin_key
    assert admin_key not in created.stderr

    await wait_for_tenant(app, tenant)
    listed = await client.get(
        "/v1/admin/api-keys", headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert listed.status_code == 200, listed.text

    again = await cli(["tenants", "apply", str(path)])
    assert again.exit_code == 0, again.output
    assert f"{tenant}: manifest unchanged" in again.stderr
    assert again.stdout == ""  # the bootstrap key is printed on creation only
    assert await owner_pool.fetchval("SELECT count(*) FROM tenants WHERE id = $1", tenant) == 1

    # An update naming a new secret that does not exist is refused before anything is written.
    anthropic = (
        f"    - provider: anthropic\n      model: claude-haiku-4-5\n"
        f"      secret: tenants/{tenant}/anthropic\n      base_url: {emulator.url}\n"
    )
    path.write_text(manifest_yaml(tenant, emulator.url, rpm=100, extra=anthropic))
    refused = await cli(["tenants", "apply", str(path)])
    assert refused.exit_code == 1, refused.output
    assert "not applied" in refused.output
    assert f"tenants/{tenant}/anthropic [anthropic/claude-haiku-4-5]: MISSING" in refused.output
    manifest = await owner_pool.fetchval("SELECT manifest FROM tenants WHERE id = $1", tenant)
    assert manifest["limits"]["requests_per_minute"] == 600
    assert len(manifest["llm"]["chain"]) == 2

    # An already-missing secret does not block an unrelated change (it is reported).
    path.write_text(manifest_yaml(tenant, emulator.url, rpm=100))
    updated = await cli(["tenants", "apply", str(path)])
    assert updated.exit_code == 0, updated.output
    assert f"{tenant}: update (1 changes)" in updated.stderr
    assert "~ limits.requests_per_minute: 600 -> 100" in updated.stderr
    assert f"tenants/{tenant}/openai [openai/gpt-4o-mini]: MISSING" in updated.stderr
    manifest = await owner_pool.fetchval("SELECT manifest FROM tenants WHERE id = $1", tenant)
    assert manifest["limits"]["requests_per_minute"] == 100

    stored = await cli(["secrets", "put", f"tenants/{tenant}/openai"], stdin="sk-apply-good-1")
    assert stored.exit_code == 0, stored.output
    verified = await cli(["tenants", "apply", "--verify-keys", str(path)])
    assert verified.exit_code == 0, verified.output
    assert f"{tenant}: manifest unchanged" in verified.stderr
    assert "[openai/gpt-4o-mini]: present, verified" in verified.stderr
    assert "sk-apply-good-1" not in verified.output
    assert emulator.app.keys["sk-apply-good-1"] == 1  # one minimal call, with that key


async def test_verify_keys_refuses_a_key_the_provider_rejects(
    cli_env: None, tmp_path: Path, emulator: EmulatorServer
) -> None:
    tenant = f"ops-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{tenant}.yaml"
    path.write_text(manifest_yaml(tenant, emulator.url))
    assert (await cli(["tenants", "apply", str(path)])).exit_code == 0
    key = f"sk-revoked-{uuid.uuid4().hex}"  # the emulator answers 401 and echoes it
    assert (await cli(["secrets", "put", f"tenants/{tenant}/openai"], stdin=key)).exit_code == 0

    result = await cli(["tenants", "apply", "--verify-keys", str(path)])
    assert result.exit_code == 1
    assert "VERIFY FAILED" in result.stderr
    assert "auth" in result.stderr
    assert key not in result.output  # the 401 body echoes the key; the report must not


async def test_schema_errors_name_the_line_and_field(cli_env: None, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "id: bad-one\nname: Bad\nlimits:\n  requests_per_minute: lots\nllm:\n  chain:\n"
        "    - provider: openai\n      modle: gpt-4o\n"
    )
    result = await cli(["tenants", "apply", str(path)])
    assert result.exit_code == 1
    assert f"{path}:4: limits/requests_per_minute: 'lots' is not of type 'integer'" in result.output
    assert f"{path}:8: llm/chain/0: Additional properties are not allowed ('modle'" in result.output
