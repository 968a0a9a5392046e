"""Vault/OpenBao specifics against a real `bao server -dev`: AppRole, renewal, outages."""

from __future__ import annotations

import asyncio
import time
import uuid

import hvac
import pytest

from app.config import VaultSettings
from app.secrets.backend import SecretsBackendUnavailable
from app.secrets.cache import SecretCache, SecretsUnavailable
from app.secrets.values import SecretRef, SecretValue
from app.secrets.vault import VaultSecretsBackend
from app.tenancy.scope import TenantScope
from tests.servers import OpenBao, OutageProxy

POLICY = """
path "secret/data/tenants/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/tenants/*" { capabilities = ["read", "list", "delete"] }
"""


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="tester", roles=frozenset())


@pytest.fixture(scope="module")
def approle(openbao: OpenBao) -> tuple[str, str]:
    """An AppRole whose tokens live 3 s (renewable up to 60 s), with a KV policy."""
    root = hvac.Client(url=openbao.addr, token=openbao.root_token)
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy("bulkhead", POLICY)
    root.auth.approle.create_or_update_approle(
        "bulkhead", token_policies=["bulkhead"], token_ttl="3s", token_max_ttl="60s"
    )
    role_id = root.auth.approle.read_role_id("bulkhead")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("bulkhead")["data"]["secret_id"]
    root.adapter.close()
    return role_id, secret_id


async def test_approle_login_and_renewal_keep_reads_working(
    openbao: OpenBao, approle: tuple[str, str]
) -> None:
    role_id, secret_id = approle
    backend = VaultSecretsBackend(
        VaultSettings(addr=openbao.addr, role_id=role_id, secret_id=secret_id)
    )
    tenant = f"va-{uuid.uuid4().hex[:8]}"
    ref = SecretRef(tenant_id=tenant, name="openai")
    try:
        await backend.put(ref, SecretValue("sk-approle-0123456789"), scope=_scope(tenant))
        first_token = backend.connection.client.token
        # Past a third of the 3 s TTL: the next call renews the token before using it.
        await asyncio.sleep(2.2)
        assert (await backend.get(ref, scope=_scope(tenant))).reveal() == "sk-approle-0123456789"
        assert backend.connection.client.token == first_token
        assert backend.connection.expires_at is not None
        assert backend.connection.expires_at - time.monotonic() > 2
    finally:
        await backend.close()


async def test_a_revoked_token_is_replaced_by_a_fresh_approle_login(
    openbao: OpenBao, approle: tuple[str, str]
) -> None:
    role_id, secret_id = approle
    backend = VaultSecretsBackend(
        VaultSettings(addr=openbao.addr, role_id=role_id, secret_id=secret_id)
    )
    tenant = f"vr-{uuid.uuid4().hex[:8]}"
    ref = SecretRef(tenant_id=tenant, name="openai")
    try:
        await backend.put(ref, SecretValue("sk-revoked-0123456789"), scope=_scope(tenant))
        root = hvac.Client(url=openbao.addr, token=openbao.root_token)
        root.auth.token.revoke(backend.connection.client.token)
        root.adapter.close()

        assert (await backend.get(ref, scope=_scope(tenant))).reveal() == "sk-revoked-0123456789"
    finally:
        await backend.close()


async def test_a_static_token_that_is_refused_is_an_outage_not_a_miss(openbao: OpenBao) -> None:
    backend = VaultSecretsBackend(VaultSettings(addr=openbao.addr, token="not-a-real-token-123"))
    try:
        with pytest.raises(SecretsBackendUnavailable) as caught:
            await backend.get(SecretRef(tenant_id="vx", name="a"), scope=_scope("vx"))
        assert "not-a-real-token-123" not in str(caught.value)
    finally:
        await backend.close()


async def test_unreachable_vault_serves_stale_then_fails_closed(openbao: OpenBao) -> None:
    proxy = await OutageProxy.to_url(openbao.addr).start()
    backend = VaultSecretsBackend(
        VaultSettings(addr=f"http://127.0.0.1:{proxy.port}", token=openbao.root_token)
    )
    tenant = f"vo-{uuid.uuid4().hex[:8]}"
    ref = SecretRef(tenant_id=tenant, name="openai")
    now = [0.0]
    cache = SecretCache(backend, ttl_seconds=60, max_stale_seconds=120, clock=lambda: now[0])
    try:
        await backend.put(ref, SecretValue("sk-stale-0123456789"), scope=_scope(tenant))
        await cache.get(ref, scope=_scope(tenant))
        # The server "goes away": its port stops listening, open connections drop.
        await proxy.cut()
        assert await backend.health() is False
        with pytest.raises(SecretsBackendUnavailable):
            await backend.get(ref, scope=_scope(tenant))

        now[0] = 150
        assert (await cache.get(ref, scope=_scope(tenant))).reveal() == "sk-stale-0123456789"
        now[0] = 181
        with pytest.raises(SecretsUnavailable):
            await cache.get(ref, scope=_scope(tenant))
    finally:
        await backend.close()


def test_vault_needs_a_token_or_an_approle() -> None:
    with pytest.raises(ValueError, match="TOKEN"):
        VaultSecretsBackend(VaultSettings(addr="http://127.0.0.1:1"))
