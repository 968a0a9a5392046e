"""The local secrets backend against real Postgres, as the non-owner app role (RLS applies).

Fixtures `owner_pool`, `app_pool` and `make_bare_tenant` come from tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from app.db.pool import Connection, create_pool, tenant_transaction
from app.db.urls import with_user
from app.secrets.backend import SecretDecryptionError, SecretNotFound, SecretsBackendUnavailable
from app.secrets.local import LocalSecretsBackend, TenantKeyMissing, ensure_tenant_key
from app.secrets.values import SecretAccessDenied, SecretRef, SecretValue
from app.tenancy.scope import TenantScope

MakeTenant = Callable[[], Awaitable[str]]

PLAINTEXT = "sk-live-integration-0123456789abcdef"


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="tester", roles=frozenset())


def _ref(tenant_id: str, name: str = "openai") -> SecretRef:
    return SecretRef.parse(f"tenants/{tenant_id}/{name}")


@asynccontextmanager
async def _as_owner(owner_pool: asyncpg.Pool, tenant_id: str) -> AsyncIterator[Connection]:
    # The tables force RLS even for their owner (unless it is a superuser), so set the tenant.
    async with tenant_transaction(owner_pool, scope=TenantScope.operator(tenant_id)) as connection:
        yield connection


async def _onboard(owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes) -> str:
    tenant_id = await make_bare_tenant()
    async with owner_pool.acquire() as connection, connection.transaction():
        assert await ensure_tenant_key(connection, tenant_id=tenant_id, kek=kek) is True
    return tenant_id


@pytest.fixture
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def backend(app_pool: asyncpg.Pool, kek: bytes) -> LocalSecretsBackend:
    return LocalSecretsBackend(app_pool, kek)


async def test_put_then_get_round_trips(
    backend: LocalSecretsBackend, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    tenant = await _onboard(owner_pool, make_bare_tenant, kek)

    assert await backend.put(_ref(tenant), SecretValue(PLAINTEXT), scope=_scope(tenant)) == 1
    value = await backend.get(_ref(tenant), scope=_scope(tenant))

    assert value.reveal() == PLAINTEXT
    assert await backend.health() is True


async def test_ensure_tenant_key_is_idempotent(
    backend: LocalSecretsBackend, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    tenant = await _onboard(owner_pool, make_bare_tenant, kek)
    first = await backend.data_key(scope=_scope(tenant))

    async with owner_pool.acquire() as connection, connection.transaction():
        assert await ensure_tenant_key(connection, tenant_id=tenant, kek=kek) is False
        # The caller's transaction gets its (unset) tenant setting back.
        assert not await connection.fetchval("SELECT current_setting('bulkhead.tenant_id', true)")

    assert await backend.data_key(scope=_scope(tenant)) == first
    assert len(first) == 32


async def test_versions_increase_and_get_returns_the_latest(
    backend: LocalSecretsBackend, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    tenant = await _onboard(owner_pool, make_bare_tenant, kek)
    scope = _scope(tenant)

    versions = [
        await backend.put(_ref(tenant), SecretValue(f"{PLAINTEXT}-{i}"), scope=scope)
        for i in range(3)
    ]
    other = await backend.put(_ref(tenant, "anthropic"), SecretValue("other"), scope=scope)

    assert versions == [1, 2, 3]
    assert other == 1
    assert (await backend.get(_ref(tenant), scope=scope)).reveal() == f"{PLAINTEXT}-2"
    assert (await backend.get(_ref(tenant, "anthropic"), scope=scope)).reveal() == "other"


async def test_missing_secret_and_missing_tenant_key_are_distinct_errors(
    backend: LocalSecretsBackend, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    onboarded = await _onboard(owner_pool, make_bare_tenant, kek)
    keyless = await make_bare_tenant()

    with pytest.raises(SecretNotFound):
        await backend.get(_ref(onboarded), scope=_scope(onboarded))
    with pytest.raises(TenantKeyMissing):
        await backend.put(_ref(keyless), SecretValue(PLAINTEXT), scope=_scope(keyless))
    with pytest.raises(TenantKeyMissing):
        await backend.data_key(scope=_scope(keyless))


@pytest.mark.parametrize("target", ["other tenant", "other ref", "later version"])
async def test_ciphertext_copied_to_another_row_fails_to_decrypt(
    backend: LocalSecretsBackend,
    owner_pool: asyncpg.Pool,
    make_bare_tenant: MakeTenant,
    kek: bytes,
    target: str,
) -> None:
    source = await _onboard(owner_pool, make_bare_tenant, kek)
    await backend.put(_ref(source), SecretValue(PLAINTEXT), scope=_scope(source))
    async with _as_owner(owner_pool, source) as connection:
        row = await connection.fetchrow(
            "SELECT nonce, ciphertext FROM secrets WHERE tenant_id = $1 AND ref = $2",
            source,
            str(_ref(source)),
        )
    assert row is not None

    tenant, ref, version = source, _ref(source), 2
    if target == "other tenant":
        tenant = await _onboard(owner_pool, make_bare_tenant, kek)
        ref, version = _ref(tenant), 1
    elif target == "other ref":
        ref, version = _ref(source, "stolen"), 1
    async with _as_owner(owner_pool, tenant) as connection:
        await connection.execute(
            "INSERT INTO secrets (tenant_id, ref, version, nonce, ciphertext)"
            " VALUES ($1, $2, $3, $4, $5)",
            tenant,
            str(ref),
            version,
            row["nonce"],
            row["ciphertext"],
        )

    with pytest.raises(SecretDecryptionError) as caught:
        await backend.get(ref, scope=_scope(tenant))
    assert PLAINTEXT not in str(caught.value)


async def test_a_tenant_cannot_read_or_write_another_tenants_ref(
    backend: LocalSecretsBackend, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    tenant_a = await _onboard(owner_pool, make_bare_tenant, kek)
    tenant_b = await _onboard(owner_pool, make_bare_tenant, kek)
    await backend.put(_ref(tenant_b), SecretValue(PLAINTEXT), scope=_scope(tenant_b))

    with pytest.raises(SecretAccessDenied):
        await backend.get(_ref(tenant_b), scope=_scope(tenant_a))
    with pytest.raises(SecretAccessDenied):
        await backend.put(_ref(tenant_b), SecretValue("overwrite"), scope=_scope(tenant_a))
    assert (await backend.get(_ref(tenant_b), scope=_scope(tenant_b))).reveal() == PLAINTEXT


async def test_stored_rows_hold_no_plaintext(
    backend: LocalSecretsBackend, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    tenant = await _onboard(owner_pool, make_bare_tenant, kek)
    await backend.put(_ref(tenant), SecretValue(PLAINTEXT), scope=_scope(tenant))
    data_key = await backend.data_key(scope=_scope(tenant))

    async with _as_owner(owner_pool, tenant) as connection:
        secret = await connection.fetchrow(
            "SELECT nonce, ciphertext FROM secrets WHERE tenant_id = $1", tenant
        )
        wrapped = await connection.fetchval(
            "SELECT wrapped_key FROM tenant_keys WHERE tenant_id = $1", tenant
        )

    assert secret is not None
    assert PLAINTEXT.encode() not in secret["ciphertext"]
    assert PLAINTEXT.encode() not in secret["nonce"]
    assert data_key not in wrapped
    assert kek not in wrapped


async def test_a_different_kek_cannot_unwrap_the_data_key(
    app_pool: asyncpg.Pool, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    tenant = await _onboard(owner_pool, make_bare_tenant, kek)
    await LocalSecretsBackend(app_pool, kek).put(
        _ref(tenant), SecretValue(PLAINTEXT), scope=_scope(tenant)
    )

    with pytest.raises(SecretDecryptionError):
        await LocalSecretsBackend(app_pool, os.urandom(32)).get(_ref(tenant), scope=_scope(tenant))


async def test_an_unreachable_database_is_an_outage_not_a_miss(
    database_url: str, owner_pool: asyncpg.Pool, make_bare_tenant: MakeTenant, kek: bytes
) -> None:
    tenant = await _onboard(owner_pool, make_bare_tenant, kek)
    pool = await create_pool(with_user(database_url, "bulkhead_app"), min_size=1, max_size=1)
    await pool.close()

    with pytest.raises(SecretsBackendUnavailable):
        await LocalSecretsBackend(pool, kek).get(_ref(tenant), scope=_scope(tenant))
    assert await LocalSecretsBackend(pool, kek).health() is False
