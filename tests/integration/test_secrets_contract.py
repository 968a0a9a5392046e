"""One contract, three real stores: local (Postgres), OpenBao (`bao server -dev`), AWS (moto).

Every test here runs against each backend through the `SecretsBackend` protocol only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import boto3
import pytest

from app.config import AwsSecretsSettings, VaultSettings
from app.secrets.aws import AwsSecretsBackend
from app.secrets.backend import SecretNotFound, SecretsBackend
from app.secrets.cache import SecretCache
from app.secrets.local import LocalSecretsBackend, ensure_tenant_key
from app.secrets.values import SecretAccessDenied, SecretRef, SecretValue
from app.secrets.vault import VaultSecretsBackend
from app.tenancy.scope import TenantScope
from tests.servers import OpenBao

PLAINTEXT = "sk-contract-0123456789abcdef"
BACKENDS = ["local", "vault", "aws"]

NewTenant = Callable[[], Awaitable[str]]


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="tester", roles=frozenset())


def _ref(tenant_id: str, name: str = "openai") -> SecretRef:
    return SecretRef(tenant_id=tenant_id, name=name)


def aws_client(endpoint: str) -> object:
    """A Secrets Manager client for moto (its credentials are accepted as they are)."""
    return boto3.session.Session().client(
        "secretsmanager",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest,
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    kek: bytes,
) -> AsyncIterator[tuple[SecretsBackend, NewTenant]]:
    """A backend and a factory of fresh tenants it can serve."""
    name: str = request.param
    backend: SecretsBackend
    if name == "local":
        backend = LocalSecretsBackend(app_pool, kek)
        make_bare = request.getfixturevalue("make_bare_tenant")

        async def new_tenant() -> str:
            tenant_id: str = await make_bare("ct")
            async with owner_pool.acquire() as connection, connection.transaction():
                await ensure_tenant_key(connection, tenant_id=tenant_id, kek=kek)
            return tenant_id

    else:
        if name == "vault":
            bao: OpenBao = request.getfixturevalue("openbao")
            backend = VaultSecretsBackend(VaultSettings(addr=bao.addr, token=bao.root_token))
        else:
            endpoint: str = request.getfixturevalue("moto_endpoint")
            backend = AwsSecretsBackend(
                AwsSecretsSettings(endpoint_url=endpoint), client=aws_client(endpoint)
            )

        async def new_tenant() -> str:
            return f"ct-{uuid.uuid4().hex[:10]}"

    yield backend, new_tenant
    await backend.close()


async def test_put_returns_increasing_versions_and_get_reads_latest_or_any(
    store: tuple[SecretsBackend, NewTenant],
) -> None:
    backend, new_tenant = store
    tenant = await new_tenant()
    scope, ref = _scope(tenant), _ref(tenant)

    versions = [
        await backend.put(ref, SecretValue(f"{PLAINTEXT}-{i}"), scope=scope) for i in (1, 2, 3)
    ]

    assert versions == [1, 2, 3]
    assert (await backend.get(ref, scope=scope)).reveal() == f"{PLAINTEXT}-3"
    assert (await backend.get(ref, scope=scope, version=1)).reveal() == f"{PLAINTEXT}-1"
    assert (await backend.get(ref, scope=scope, version=2)).reveal() == f"{PLAINTEXT}-2"
    with pytest.raises(SecretNotFound):
        await backend.get(ref, scope=scope, version=9)


async def test_values_round_trip_exactly(store: tuple[SecretsBackend, NewTenant]) -> None:
    backend, new_tenant = store
    tenant = await new_tenant()
    text = "-----BEGIN PRIVATE KEY-----\nZ\u00e9\u4e2d \"quoted\" 'x' \\ end\n"
    await backend.put(_ref(tenant, "pem"), SecretValue(text), scope=_scope(tenant))

    assert (await backend.get(_ref(tenant, "pem"), scope=_scope(tenant))).reveal() == text


async def test_missing_ref_is_not_found(store: tuple[SecretsBackend, NewTenant]) -> None:
    backend, new_tenant = store
    tenant = await new_tenant()

    with pytest.raises(SecretNotFound) as caught:
        await backend.get(_ref(tenant, "nothing-here"), scope=_scope(tenant))
    assert str(_ref(tenant, "nothing-here")) in str(caught.value)


async def test_another_tenants_ref_is_refused_for_every_operation(
    store: tuple[SecretsBackend, NewTenant],
) -> None:
    backend, new_tenant = store
    owner, intruder = await new_tenant(), await new_tenant()
    await backend.put(_ref(owner), SecretValue(PLAINTEXT), scope=_scope(owner))

    with pytest.raises(SecretAccessDenied):
        await backend.get(_ref(owner), scope=_scope(intruder))
    with pytest.raises(SecretAccessDenied):
        await backend.put(_ref(owner), SecretValue("overwrite"), scope=_scope(intruder))
    with pytest.raises(SecretAccessDenied):
        await backend.delete(_ref(owner), scope=_scope(intruder))
    assert await backend.list(scope=_scope(intruder)) == []
    assert (await backend.get(_ref(owner), scope=_scope(owner))).reveal() == PLAINTEXT


async def test_platform_ref_needs_an_explicit_opt_in(
    store: tuple[SecretsBackend, NewTenant],
) -> None:
    backend, new_tenant = store
    tenant = await new_tenant()
    platform = SecretRef(tenant_id=None, name=f"shared-{uuid.uuid4().hex[:8]}")

    with pytest.raises(SecretAccessDenied):
        await backend.get(platform, scope=_scope(tenant))
    with pytest.raises(SecretAccessDenied):
        await backend.get(
            platform, scope=_scope(tenant), platform_refs=frozenset({"platform/other"})
        )
    opted_in = frozenset({str(platform)})
    if isinstance(backend, LocalSecretsBackend):
        # The local store keeps tenant secrets only (its rows belong to a tenant under RLS).
        with pytest.raises(SecretAccessDenied):
            await backend.get(platform, scope=_scope(tenant), platform_refs=opted_in)
        return
    await backend.put(
        platform, SecretValue(PLAINTEXT), scope=_scope(tenant), platform_refs=opted_in
    )
    value = await backend.get(platform, scope=_scope(tenant), platform_refs=opted_in)
    assert value.reveal() == PLAINTEXT


async def test_list_shows_own_refs_with_latest_versions(
    store: tuple[SecretsBackend, NewTenant],
) -> None:
    backend, new_tenant = store
    tenant, other = await new_tenant(), await new_tenant()
    scope = _scope(tenant)
    await backend.put(_ref(tenant, "openai"), SecretValue("a1"), scope=scope)
    await backend.put(_ref(tenant, "openai"), SecretValue("a2"), scope=scope)
    await backend.put(_ref(tenant, "anthropic"), SecretValue("b1"), scope=scope)
    await backend.put(_ref(other, "openai"), SecretValue("c1"), scope=_scope(other))

    assert await backend.list(scope=scope) == [
        (_ref(tenant, "anthropic"), 1),
        (_ref(tenant, "openai"), 2),
    ]


async def test_delete_removes_every_version(store: tuple[SecretsBackend, NewTenant]) -> None:
    backend, new_tenant = store
    tenant = await new_tenant()
    scope, ref = _scope(tenant), _ref(tenant)
    await backend.put(ref, SecretValue("v1"), scope=scope)
    await backend.put(ref, SecretValue("v2"), scope=scope)

    assert await backend.delete(ref, scope=scope) is True

    with pytest.raises(SecretNotFound):
        await backend.get(ref, scope=scope)
    with pytest.raises(SecretNotFound):
        await backend.get(ref, scope=scope, version=1)
    assert await backend.list(scope=scope) == []
    assert await backend.delete(ref, scope=scope) is False


async def test_health(store: tuple[SecretsBackend, NewTenant]) -> None:
    backend, _ = store
    assert await backend.health() is True


async def test_cache_makes_one_backend_call_for_100_concurrent_misses_and_sees_rotation(
    store: tuple[SecretsBackend, NewTenant],
) -> None:
    backend, new_tenant = store
    tenant = await new_tenant()
    scope, ref = _scope(tenant), _ref(tenant)
    await backend.put(ref, SecretValue("before"), scope=scope)
    cache = SecretCache(backend, ttl_seconds=60)

    values = await asyncio.gather(*(cache.get(ref, scope=scope) for _ in range(100)))

    assert cache.backend_calls == 1
    assert {v.reveal() for v in values} == {"before"}
    await backend.put(ref, SecretValue("after"), scope=scope)
    assert (await cache.get(ref, scope=scope)).reveal() == "before"  # within the TTL
    await cache.invalidate(ref, scope=scope)
    assert (await cache.get(ref, scope=scope)).reveal() == "after"
    assert cache.backend_calls == 2


async def test_aws_backend_built_from_settings_uses_the_standard_credential_chain(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    backend = AwsSecretsBackend(AwsSecretsSettings(endpoint_url=moto_endpoint, prefix="other/"))
    tenant = f"ct-{uuid.uuid4().hex[:10]}"
    try:
        assert await backend.put(_ref(tenant), SecretValue(PLAINTEXT), scope=_scope(tenant)) == 1
        assert (await backend.get(_ref(tenant), scope=_scope(tenant))).reveal() == PLAINTEXT
        assert await backend.list(scope=_scope(tenant)) == [(_ref(tenant), 1)]
    finally:
        await backend.close()
