"""SdkClients: per-(tenant, base URL, key) SDK clients over shared pools, real SDKs.

The cache checks build real `AsyncOpenAI`/`AsyncAnthropic` objects (no request is sent); the
isolation check drives two tenants' chains through one `SdkClients` against the loopback
emulator, which refuses any key containing `revoked` with a 401.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.config import LlmSettings
from app.llm.breaker import BreakerPolicy, BreakerRegistry
from app.llm.chains import build_chain
from app.llm.clients import SdkClients
from app.llm.provider import CompletionRequest, ContextChunk
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import Role, TenantScope
from tests.provider_emulator import EmulatorServer

BASE = "http://127.0.0.1:9/v1"
QUESTION = CompletionRequest(
    question="How much is the hotel limit?",
    context=(ContextChunk(1, "travel", "c1", "Travel", "Hotels: 180 euros per night.", 1.0),),
    model="",
)


async def test_one_client_per_tenant_and_key_over_one_pool() -> None:
    clients = SdkClients()
    try:
        a = clients.openai(tenant_id="a", base_url=BASE, key=SecretValue("sk-a-000000"))
        again = clients.openai(tenant_id="a", base_url=BASE, key=SecretValue("sk-a-000000"))
        b = clients.openai(tenant_id="b", base_url=BASE, key=SecretValue("sk-b-000000"))
        assert again is a
        assert b is not a
        assert (a.api_key, b.api_key) == ("sk-a-000000", "sk-b-000000")
        assert a._client is b._client, "one connection pool per (SDK, base URL)"
        other_url = clients.openai(tenant_id="a", base_url=BASE + "x", key=SecretValue("sk-a-0"))
        assert other_url._client is not a._client
        claude = clients.anthropic(tenant_id="a", base_url=BASE, key=SecretValue("sk-ant-a-0"))
        assert claude.api_key == "sk-ant-a-0"
        assert claude._client is not a._client
        assert clients.pools() == 3
    finally:
        await clients.aclose()


async def test_a_rotated_key_gets_a_client_with_the_new_key() -> None:
    clients = SdkClients()
    try:
        old = clients.anthropic(tenant_id="a", base_url=None, key=SecretValue("sk-ant-old-0"))
        new = clients.anthropic(tenant_id="a", base_url=None, key=SecretValue("sk-ant-new-0"))
        assert new is not old
        assert new.api_key == "sk-ant-new-0"
    finally:
        await clients.aclose()


async def test_the_cache_is_bounded_and_eviction_keeps_the_pool_open() -> None:
    clients = SdkClients(max_clients=2)
    try:
        first = clients.openai(tenant_id="t1", base_url=BASE, key=SecretValue("sk-1-000000"))
        clients.openai(tenant_id="t2", base_url=BASE, key=SecretValue("sk-2-000000"))
        clients.openai(tenant_id="t1", base_url=BASE, key=SecretValue("sk-1-000000"))  # used
        clients.openai(tenant_id="t3", base_url=BASE, key=SecretValue("sk-3-000000"))
        assert clients.cached() == 2
        # t1 was used most recently, so t2 went; t1's client is still the cached one.
        assert clients.openai(tenant_id="t1", base_url=BASE, key=SecretValue("sk-1-000000")) is (
            first
        )
        assert clients.cached() == 2
        assert not first._client.is_closed, "evicting a client must not close the shared pool"
    finally:
        await clients.aclose()
    assert first._client.is_closed


class TenantKeys:
    """In-memory `SecretResolver`: one key per tenant."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = keys

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        assert ref.tenant_id == scope.tenant_id
        return SecretValue(self._keys[scope.tenant_id])

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        """Nothing cached: the next get returns the same (refused) key."""


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_tenants_sharing_a_pool_never_use_each_others_key(
    emulator: EmulatorServer, provider: str
) -> None:
    good, bad = f"good-{uuid.uuid4().hex[:8]}", f"bad-{uuid.uuid4().hex[:8]}"
    resolver = TenantKeys({good: "sk-valid-0123456789", bad: "sk-revoked-0123456789"})
    clients = SdkClients()
    base = emulator.url + "/v1" if provider == "openai" else emulator.url
    breakers = BreakerRegistry(BreakerPolicy(consecutive_failures=10**6, min_calls=10**6))
    chains = {
        tenant: build_chain(
            (
                ChainEntry(
                    provider=provider,  # type: ignore[arg-type]
                    model="m",
                    secret=f"tenants/{tenant}/{provider}",
                    base_url=base,
                ),
                ChainEntry(provider="local"),
            ),
            resolver=resolver,
            settings=LlmSettings(),
            breakers=breakers,
            clients=clients,
        )
        for tenant in (good, bad)
    }

    def scope(tenant: str) -> TenantScope:
        return TenantScope(
            tenant_id=tenant, subject="u", roles=frozenset({Role.CHAT}), credential_id="c"
        )

    try:
        order = [good, bad] * 10
        answers = await asyncio.gather(
            *(chains[t].complete(scope=scope(t), request=QUESTION) for t in order)
        )
        assert [a.provider for a in answers] == [provider, "local"] * 10
        assert clients.pools() == 1
    finally:
        for chain in chains.values():
            await chain.aclose()
        await clients.aclose()
