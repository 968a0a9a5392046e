"""`bulkhead secrets ...` against the real database, and the running app seeing the change.

The app's cache is told by NOTIFY, so a rotation reaches it at once, not after the TTL.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import asyncpg
import pytest
from click.testing import CliRunner, Result
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.cli import main
from app.config import Settings, get_settings
from app.db.urls import runtime_url
from app.secrets.backend import SecretDecryptionError
from app.secrets.cache import SecretCache, _Entry
from app.secrets.local import (
    LocalSecretsBackend,
    ensure_tenant_key,
    listen_for_changes,
    rotate_kek,
)
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.scope import TenantScope
from tests.conftest import TenantFactory, wait_for_tenant

CANARY = "sk-cli-canary-5f1d2c3b4a596877"


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="tester", roles=frozenset())


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    assert settings.db.url is not None
    env = {
        "DATABASE_URL": settings.db.url,
        "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(settings.master_key_path),
        "BULKHEAD_DATA_DIR": str(settings.data_dir),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


async def _cli(
    args: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None
) -> Result:
    # The CLI runs its own event loop, so it goes to a thread.
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, args, input=stdin, env=env)


async def test_put_rotate_list_delete_and_replicas_see_rotation_at_once(
    cli_env: dict[str, str],
    make_tenant: TenantFactory,
    app: Litestar,
    client: AsyncTestClient[Litestar],
    app_pool: asyncpg.Pool,
    kek: bytes,
    settings: Settings,
) -> None:
    tenant = await make_tenant("cli")
    await wait_for_tenant(app, tenant)
    ref = f"tenants/{tenant}/openai"
    # A second "replica" in this loop, with a TTL long enough that only NOTIFY can refresh it.
    replica = SecretCache(LocalSecretsBackend(app_pool, kek), ttl_seconds=3600)
    listener = await listen_for_changes(runtime_url(settings.db), replica.forget)
    app_cache: SecretCache = app.state.resources.secret_cache
    try:
        put = await _cli(["secrets", "put", ref], stdin=CANARY + "\n")
        assert put.exit_code == 0, put.output
        assert "stored version 1" in put.output
        assert (await replica.get(SecretRef.parse(ref), scope=_scope(tenant))).reveal() == CANARY
        # The app (in its own loop) holds a value too: NOTIFY must drop it.
        app_cache._entries[ref] = _Entry(SecretValue(CANARY), fetched_at=time.monotonic())

        rotated = await _cli(
            ["secrets", "rotate", ref, "--from-env", "NEW_KEY"], env={"NEW_KEY": CANARY + "-v2"}
        )
        assert rotated.exit_code == 0, rotated.output
        assert "version 2" in rotated.output
        async with asyncio.timeout(5):
            while ref in app_cache._entries:  # noqa: ASYNC110 - the NOTIFY lands in the app's loop
                await asyncio.sleep(0.02)
            while (  # noqa: ASYNC110 - and in this loop's listener
                await replica.get(SecretRef.parse(ref), scope=_scope(tenant))
            ).reveal() != CANARY + "-v2":
                await asyncio.sleep(0.02)
    finally:
        await listener.close()

    listed = await _cli(["secrets", "list", tenant])
    assert listed.output.strip() == f"{ref}\tv2"

    deleted = await _cli(["secrets", "delete", ref, "--yes"])
    assert deleted.exit_code == 0
    assert "deleted" in deleted.output
    assert (await _cli(["secrets", "list", tenant])).output == ""
    for result in (put, rotated, listed, deleted):
        assert CANARY not in result.output


async def test_values_are_never_taken_from_argv(cli_env: dict[str, str]) -> None:
    for command in ("put", "rotate"):
        result = await _cli(["secrets", command, "tenants/acme/openai", CANARY])
        assert result.exit_code == 2
        assert "never from arguments" in result.output
        assert CANARY not in result.output


async def test_rotate_needs_an_existing_secret_and_refs_are_validated(
    cli_env: dict[str, str], make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant("cli")
    missing = await _cli(["secrets", "rotate", f"tenants/{tenant}/none"], stdin="x" * 10)
    assert missing.exit_code == 1
    assert "no secret stored" in missing.output
    bad = await _cli(["secrets", "put", "../etc/passwd"], stdin="x" * 10)
    assert bad.exit_code == 2
    assert "invalid secret ref" in bad.output


async def test_kek_rotation_rewraps_while_a_keyring_replica_keeps_serving(
    app_pool: asyncpg.Pool, owner_pool: asyncpg.Pool, make_bare_tenant: TenantFactory
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    tenant = await make_bare_tenant("kek")
    async with owner_pool.acquire() as connection, connection.transaction():
        await ensure_tenant_key(connection, tenant_id=tenant, kek=old)
    ref = SecretRef(tenant_id=tenant, name="openai")
    await LocalSecretsBackend(app_pool, old).put(ref, SecretValue(CANARY), scope=_scope(tenant))
    # Step 1: replicas restart with the new KEK and the old one as previous.
    replica = LocalSecretsBackend(app_pool, new, previous_keks=[old])
    assert (await replica.get(ref, scope=_scope(tenant))).reveal() == CANARY

    async with owner_pool.acquire() as connection:
        result = await rotate_kek(connection, kek=new, previous_keks=[old], tenant_ids=[tenant])
        again = await rotate_kek(connection, kek=new, previous_keks=[old], tenant_ids=[tenant])

    assert result.rewrapped == (tenant,)
    assert again.unchanged == (tenant,)
    assert (await replica.get(ref, scope=_scope(tenant))).reveal() == CANARY
    # Step 3: the old key is gone, and only the new one opens the data key.
    assert (
        await LocalSecretsBackend(app_pool, new).get(ref, scope=_scope(tenant))
    ).reveal() == CANARY
    with pytest.raises(SecretDecryptionError):
        await LocalSecretsBackend(app_pool, old).get(ref, scope=_scope(tenant))


async def test_rotate_kek_command_reports_keys_it_cannot_unwrap(
    cli_env: dict[str, str], settings: Settings
) -> None:
    unrelated = base64.b64encode(os.urandom(32)).decode()
    result = await _cli(
        ["secrets", "rotate-kek"],
        env={
            "BULKHEAD_SECRETS__MASTER_KEY": unrelated,
            "BULKHEAD_SECRETS__PREVIOUS_MASTER_KEYS": f'["{unrelated}"]',
        },
    )
    # Every tenant of this run is wrapped by the session KEK, which was not supplied.
    assert result.exit_code == 1
    assert "could not be rewrapped" in result.output
    assert "rewrapped 0" in result.output
