"""`bulkhead tenants offboard`: export, crypto-shred, delete; then hunt for any remains.

Two tenants get documents (rows and vectors), conversations, audit and usage rows, an API key,
a stored secret and an auth-failure row. One is offboarded while the app runs (so the app,
which holds the vector shard, deletes its vectors on the registry NOTIFY). Then every table of
the schema, listed from the catalog, is scanned for the tenant's id in any column; the vector
store and the secrets backend are asked too; and the other tenant's data is compared with a
snapshot taken before.
"""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.chat.crypto import ConversationCipher
from app.config import Settings, VaultSettings
from app.db.pool import connect, tenant_transaction
from app.identity.api_keys import ApiKeyHasher, create_key
from app.lifecycle.offboard import delete_secrets, offboard
from app.secrets.local import LocalSecretsBackend, TenantKeyMissing
from app.secrets.values import SecretRef, SecretValue
from app.secrets.vault import VaultSecretsBackend
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory, flush_audit, wait_for_tenant
from tests.integration.test_tenant_apply import cli, cli_env  # noqa: F401 - fixture
from tests.servers import OpenBao

Client = AsyncTestClient[Litestar]


async def _populate(
    tenant: str,
    client: Client,
    auth: AuthHeaders,
    owner_pool: asyncpg.Pool,
    kek: bytes,
    app_pool: asyncpg.Pool,
) -> str:
    headers = auth(tenant)
    question = f"What is the {tenant} hotel allowance?"
    ingest = await client.post(
        "/v1/documents",
        json={
            "documents": [
                {
                    "id": "travel",
                    "title": "Travel",
                    "text": f"# Travel\n\n{tenant} hotels: 180 euros.\n",
                }
            ]
        },
        headers=headers,
    )
    assert ingest.status_code == 201, ingest.text
    chat = await client.post("/v1/chat", json={"message": question}, headers=headers)
    assert chat.status_code == 200, chat.text
    await LocalSecretsBackend(app_pool, kek).put(
        SecretRef.parse(f"tenants/{tenant}/openai"),
        SecretValue(f"sk-{tenant}-key"),
        scope=TenantScope.operator(tenant),
    )
    async with tenant_transaction(owner_pool, scope=TenantScope.operator(tenant)) as connection:
        await create_key(
            connection,
            tenant_id=tenant,
            hasher=ApiKeyHasher(b"p" * 32),
            name="svc",
            scopes=["chat"],
            created_by="test",
        )
        await connection.execute(
            "INSERT INTO auth_failures (tenant_id, reason, method, route)"
            " VALUES ($1, 'expired', 'POST', '/v1/chat')",
            tenant,
        )
    return question


async def _rows_mentioning(owner_pool: asyncpg.Pool, tenant: str) -> dict[str, int]:
    """Per table of the schema (from the catalog): rows whose any column mentions `tenant`."""
    # RLS shows the tenant's rows to the scan.
    async with tenant_transaction(owner_pool, scope=TenantScope.operator(tenant)) as connection:
        tables = await connection.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        found = {}
        for row in tables:
            name = row["table_name"]
            found[name] = await connection.fetchval(
                f'SELECT count(*) FROM "{name}" AS t WHERE t::text LIKE $1',  # noqa: S608 - catalog name
                f"%{tenant}%",
            )
    return found


async def _until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll `predicate` for up to 5 s (audit rows and the NOTIFY land in the background)."""
    async with asyncio.timeout(5):
        while not await predicate():  # noqa: ASYNC110 - the work happens in other tasks
            await asyncio.sleep(0.05)


async def test_offboard_exports_then_leaves_nothing_and_spares_the_other_tenant(
    make_tenant: TenantFactory,
    app: Litestar,
    client: Client,
    auth: AuthHeaders,
    owner_pool: asyncpg.Pool,
    app_pool: asyncpg.Pool,
    kek: bytes,
    settings: Settings,
    tmp_path: Path,
) -> None:
    victim, bystander = await make_tenant("gone"), await make_tenant("stay")
    for tenant in (victim, bystander):
        await wait_for_tenant(app, tenant)
    question = await _populate(victim, client, auth, owner_pool, kek, app_pool)
    await _populate(bystander, client, auth, owner_pool, kek, app_pool)

    # Every audit row is queued before its response starts: once the writer has flushed,
    # the snapshots below see all of them.
    await flush_audit(client)
    before = await _rows_mentioning(owner_pool, victim)
    assert all(
        before[t] > 0
        for t in (
            "documents",
            "messages",
            "secrets",
            "tenant_keys",
            "api_keys",
            "auth_failures",
            "audit_events",
            "usage",
        )
    )
    bystander_before = await _rows_mentioning(owner_pool, bystander)
    index = app.state.resources.index
    assert await index.tenant_points(scope=TenantScope.operator(victim)) > 0
    bystander_points = await index.tenant_points(scope=TenantScope.operator(bystander))

    export = tmp_path / "export"
    backend = LocalSecretsBackend(app_pool, kek)
    assert settings.db.url is not None
    connection = await connect(settings.db.url)
    try:
        report = await offboard(
            connection,
            tenant_id=victim,
            export_dir=export,
            settings=settings,
            backend=backend,
            cipher=ConversationCipher.from_settings(settings, kek),
        )
    finally:
        await connection.close()

    # The export: every file private, conversations in plaintext.
    assert report.exported["documents"] == 1
    assert report.exported["conversations"] == 1
    assert report.exported["audit"] > 0
    assert report.exported["usage"] > 0
    for file in export.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert bystander not in file.read_text(), f"{file.name} holds the other tenant's data"
    conversation = json.loads((export / "conversations.ndjson").read_text().splitlines()[0])
    assert conversation["messages"][0]["content"] == question
    assert report.data_key_destroyed
    assert report.secrets_deleted == [f"tenants/{victim}/openai"]

    # Nothing of the tenant in any table of the schema.
    after = await _rows_mentioning(owner_pool, victim)
    assert {t: n for t, n in after.items() if n} == {}
    # Its data key is gone (crypto-shredding), so is every secret.
    with pytest.raises(TenantKeyMissing):
        await backend.data_key(scope=TenantScope.operator(victim))
    assert await backend.list(scope=TenantScope.operator(victim)) == []

    # The running app drops the tenant and deletes its vectors when the NOTIFY lands.
    async def vectors_gone() -> bool:
        return await index.tenant_points(scope=TenantScope.operator(victim)) == 0

    await _until(vectors_gone)
    assert app.state.resources.registry.tenant(victim) is None
    # The other tenant is untouched.
    bystander_after = await _rows_mentioning(owner_pool, bystander)
    # Rate counters reach the table at the limiter's next sync, whenever that lands: they may
    # only have grown. Every other table is exactly as it was.
    counters = "rate_counters"
    assert bystander_after.pop(counters) >= bystander_before.pop(counters)
    assert bystander_after == bystander_before
    assert await index.tenant_points(scope=TenantScope.operator(bystander)) == bystander_points
    chat = await client.post("/v1/chat", json={"message": "hotel?"}, headers=auth(bystander))
    assert chat.status_code == 200
    assert (
        await client.post("/v1/chat", json={"message": "x"}, headers=auth(victim))
    ).status_code == 401


async def test_secrets_in_vault_are_deleted_for_that_tenant_only(openbao: OpenBao) -> None:
    backend = VaultSecretsBackend(VaultSettings(addr=openbao.addr, token=openbao.root_token))
    victim, bystander = f"v-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    try:
        for tenant in (victim, bystander):
            for name in ("openai", "anthropic"):
                ref = SecretRef.parse(f"tenants/{tenant}/{name}")
                await backend.put(
                    ref, SecretValue(f"v-{tenant}-{name}"), scope=TenantScope.operator(tenant)
                )
        deleted = await delete_secrets(backend, tenant_id=victim)
        assert sorted(deleted) == [f"tenants/{victim}/anthropic", f"tenants/{victim}/openai"]
        assert await backend.list(scope=TenantScope.operator(victim)) == []
        assert len(await backend.list(scope=TenantScope.operator(bystander))) == 2
    finally:
        await backend.close()


@pytest.mark.usefixtures("cli_env")
async def test_cli_asks_for_confirmation(
    make_tenant: TenantFactory, owner_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    tenant = await make_tenant("keep")
    result = await cli(["tenants", "offboard", tenant, "--export", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "--yes" in result.output
    assert await owner_pool.fetchval("SELECT count(*) FROM tenants WHERE id = $1", tenant) == 1
    assert not (tmp_path / "x").exists()
