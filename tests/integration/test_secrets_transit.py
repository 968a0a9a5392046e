"""Tenant data keys wrapped by OpenBao Transit (`kek: vault-transit:<key>`), real server."""

from __future__ import annotations

import os
import uuid

import asyncpg
import hvac
import pytest

from app.config import VaultSettings
from app.db.pool import tenant_transaction
from app.secrets.backend import SecretDecryptionError
from app.secrets.local import LocalSecretsBackend, ensure_tenant_key, rotate_kek
from app.secrets.values import SecretRef, SecretValue
from app.secrets.wrapping import TransitKeyWrapper
from app.tenancy.scope import TenantScope
from tests.conftest import TenantFactory
from tests.servers import OpenBao

PLAINTEXT = "sk-transit-0123456789abcdef"


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="tester", roles=frozenset())


@pytest.fixture(scope="module")
def transit_key(openbao: OpenBao) -> str:
    root = hvac.Client(url=openbao.addr, token=openbao.root_token)
    if "transit/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit")
    name = f"bulkhead-{uuid.uuid4().hex[:8]}"
    root.secrets.transit.create_key(name)
    root.adapter.close()
    return name


@pytest.fixture
async def transit(openbao: OpenBao, transit_key: str) -> TransitKeyWrapper:
    wrapper = TransitKeyWrapper(
        VaultSettings(addr=openbao.addr, token=openbao.root_token), transit_key
    )
    yield wrapper
    await wrapper.close()


async def _onboard(owner_pool: asyncpg.Pool, make_bare_tenant: TenantFactory, kek: object) -> str:
    tenant = await make_bare_tenant("tr")
    async with owner_pool.acquire() as connection, connection.transaction():
        assert await ensure_tenant_key(connection, tenant_id=tenant, kek=kek)  # type: ignore[arg-type]
    return tenant


async def _wrapped(owner_pool: asyncpg.Pool, tenant: str) -> asyncpg.Record:
    async with tenant_transaction(owner_pool, scope=TenantScope.operator(tenant)) as connection:
        row = await connection.fetchrow(
            "SELECT kek_id, wrapped_key FROM tenant_keys WHERE tenant_id = $1", tenant
        )
    assert row is not None
    return row


async def test_secrets_round_trip_with_transit_wrapped_data_keys(
    transit: TransitKeyWrapper,
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    make_bare_tenant: TenantFactory,
) -> None:
    tenant = await _onboard(owner_pool, make_bare_tenant, transit)
    backend = LocalSecretsBackend(app_pool, transit)
    ref = SecretRef(tenant_id=tenant, name="openai")

    await backend.put(ref, SecretValue(PLAINTEXT), scope=_scope(tenant))

    assert (await backend.get(ref, scope=_scope(tenant))).reveal() == PLAINTEXT
    row = await _wrapped(owner_pool, tenant)
    assert row["kek_id"] == transit.kek_id
    assert row["wrapped_key"].startswith(b"vault:v1:")


async def test_a_transit_wrapped_key_copied_to_another_tenant_does_not_unwrap(
    transit: TransitKeyWrapper,
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    make_bare_tenant: TenantFactory,
) -> None:
    source = await _onboard(owner_pool, make_bare_tenant, transit)
    target = await _onboard(owner_pool, make_bare_tenant, transit)
    stolen = (await _wrapped(owner_pool, source))["wrapped_key"]
    async with tenant_transaction(owner_pool, scope=TenantScope.operator(target)) as connection:
        await connection.execute(
            "UPDATE tenant_keys SET wrapped_key = $2 WHERE tenant_id = $1", target, stolen
        )

    with pytest.raises(SecretDecryptionError):
        await LocalSecretsBackend(app_pool, transit).data_key(scope=_scope(target))


async def test_rotate_kek_moves_tenants_from_the_master_key_to_transit(
    transit: TransitKeyWrapper,
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    make_bare_tenant: TenantFactory,
) -> None:
    master = os.urandom(32)
    tenant = await _onboard(owner_pool, make_bare_tenant, master)
    ref = SecretRef(tenant_id=tenant, name="openai")
    await LocalSecretsBackend(app_pool, master).put(
        ref, SecretValue(PLAINTEXT), scope=_scope(tenant)
    )

    async with owner_pool.acquire() as connection:
        result = await rotate_kek(
            connection, kek=transit, previous_keks=[master], tenant_ids=[tenant]
        )

    assert result.rewrapped == (tenant,)
    assert (await _wrapped(owner_pool, tenant))["kek_id"] == transit.kek_id
    assert (
        await LocalSecretsBackend(app_pool, transit).get(ref, scope=_scope(tenant))
    ).reveal() == PLAINTEXT
