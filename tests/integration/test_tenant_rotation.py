"""`bulkhead tenants rotate-key`: store, verify, switch, retire, with chat traffic running.

Bounded load: four loopback clients send chat requests through the app (real OpenAI SDK to
the emulator) for the whole rotation; every one must be answered by OpenAI itself, not by the
local fallback, and after the switch only the new key reaches the provider.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.lifecycle.rotation import RotationError, rotate_provider_key
from app.secrets.local import LocalSecretsBackend
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry, LlmSpec, TenantManifest
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant
from tests.integration.test_tenant_apply import cli, cli_env  # noqa: F401 - fixture
from tests.provider_emulator import EmulatorServer

Client = AsyncTestClient[Litestar]
DOC = "# Travel\n\nHotel stays are reimbursed up to 180 euros per night.\n"
WORKERS = 4
MAX_REQUESTS = 400


async def _tenant_with_openai(
    make_tenant: TenantFactory, app: Litestar, client: Client, auth: AuthHeaders, url: str
) -> tuple[str, TenantManifest]:
    tenant = f"rot-{uuid.uuid4().hex[:8]}"
    chain = (
        ChainEntry(
            provider="openai",
            model="gpt-4o-mini",
            secret=f"tenants/{tenant}/openai",
            base_url=url + "/v1",
        ),
        ChainEntry(provider="local"),
    )
    await make_tenant(tenant_id=tenant, llm=LlmSpec(chain=chain))
    await wait_for_tenant(app, tenant)
    ingest = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "travel", "title": "Travel", "text": DOC}]},
        headers=auth(tenant),
    )
    assert ingest.status_code == 201, ingest.text
    return tenant, app.state.resources.registry.tenant(tenant).manifest


async def test_rotation_under_load_fails_no_request(
    make_tenant: TenantFactory,
    app: Litestar,
    client: Client,
    auth: AuthHeaders,
    emulator: EmulatorServer,
    app_pool: asyncpg.Pool,
    kek: bytes,
    settings: Settings,
) -> None:
    tenant, manifest = await _tenant_with_openai(make_tenant, app, client, auth, emulator.url)
    backend = LocalSecretsBackend(app_pool, kek)
    scope = TenantScope.operator(tenant)
    ref = SecretRef.parse(f"tenants/{tenant}/openai")
    old_key, new_key = f"sk-old-{uuid.uuid4().hex}", f"sk-new-{uuid.uuid4().hex}"
    await backend.put(ref, SecretValue(old_key), scope=scope)
    headers = auth(tenant)

    outcomes: list[tuple[int, str]] = []
    rotated = asyncio.Event()
    after_switch = 0

    async def worker() -> None:
        nonlocal after_switch
        while len(outcomes) < MAX_REQUESTS and after_switch < 20:
            response = await client.post(
                "/v1/chat", json={"message": "hotel per night?"}, headers=headers
            )
            body = response.json()
            outcomes.append((response.status_code, body.get("provider", body.get("code", ""))))
            if rotated.is_set():
                after_switch += 1

    async def rotate() -> None:
        async with asyncio.timeout(30):
            while len(outcomes) < WORKERS:  # noqa: ASYNC110 - the workers append as they go
                await asyncio.sleep(0.01)  # traffic is flowing with the old key
        steps: list[str] = []
        await rotate_provider_key(
            backend,
            manifest,
            provider="openai",
            value=SecretValue(new_key),
            settings=settings,
            settle_seconds=0.0,
            say=steps.append,
        )
        assert [s[:3] for s in steps] == ["1/4", "2/4", "3/4", "4/4"]
        rotated.set()

    async with asyncio.timeout(60):
        await asyncio.gather(rotate(), *(worker() for _ in range(WORKERS)))

    failures = [o for o in outcomes if o != (200, "openai")]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
    assert len(outcomes) > 20
    assert emulator.app.keys[old_key] > 0
    assert emulator.app.keys[new_key] > 0
    # The switch is complete: the live ref serves the new key, the staged copy is gone.
    assert (await backend.get(ref, scope=scope)).reveal() == new_key
    assert [str(r) for r, _ in await backend.list(scope=scope)] == [str(ref)]
    # From now on only the new key reaches the provider: the old one can be revoked there.
    emulator.app.keys.pop(old_key)
    for _ in range(5):
        response = await client.post("/v1/chat", json={"message": "hotel?"}, headers=headers)
        assert response.json()["provider"] == "openai"
    assert old_key not in emulator.app.keys


async def test_a_key_that_fails_verification_is_never_switched_in(
    make_tenant: TenantFactory,
    app: Litestar,
    client: Client,
    auth: AuthHeaders,
    emulator: EmulatorServer,
    app_pool: asyncpg.Pool,
    kek: bytes,
    settings: Settings,
) -> None:
    tenant, manifest = await _tenant_with_openai(make_tenant, app, client, auth, emulator.url)
    backend = LocalSecretsBackend(app_pool, kek)
    scope = TenantScope.operator(tenant)
    ref = SecretRef.parse(f"tenants/{tenant}/openai")
    await backend.put(ref, SecretValue("sk-live-good-key"), scope=scope)
    bad = f"sk-revoked-{uuid.uuid4().hex}"

    with pytest.raises(RotationError) as info:
        await rotate_provider_key(
            backend,
            manifest,
            provider="openai",
            value=SecretValue(bad),
            settings=settings,
            settle_seconds=0.0,
            say=lambda _: None,
        )
    assert "nothing was switched" in str(info.value)
    assert bad not in str(info.value)
    assert (await backend.get(ref, scope=scope)).reveal() == "sk-live-good-key"
    assert await backend.list(scope=scope) == [(ref, 1)]  # staged copy removed
    response = await client.post("/v1/chat", json={"message": "hotel?"}, headers=auth(tenant))
    assert response.json()["provider"] == "openai"


@pytest.mark.usefixtures("cli_env")
async def test_cli_reads_the_key_from_env_never_argv(
    make_tenant: TenantFactory,
    app: Litestar,
    client: Client,
    auth: AuthHeaders,
    emulator: EmulatorServer,
    app_pool: asyncpg.Pool,
    kek: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, _ = await _tenant_with_openai(make_tenant, app, client, auth, emulator.url)
    backend = LocalSecretsBackend(app_pool, kek)
    scope = TenantScope.operator(tenant)
    ref = SecretRef.parse(f"tenants/{tenant}/openai")
    await backend.put(ref, SecretValue("sk-cli-old-key"), scope=scope)

    argv = await cli(["tenants", "rotate-key", tenant, "--provider", "openai", "sk-in-argv-123"])
    assert argv.exit_code == 2
    assert "sk-in-argv-123" not in argv.output

    monkeypatch.setenv("NEW_OPENAI_KEY", "sk-cli-new-key")
    result = await cli(
        ["tenants", "rotate-key", tenant, "--provider", "openai", "--from-env", "NEW_OPENAI_KEY"]
    )
    assert result.exit_code == 0, result.output
    assert "3/4 switched" in result.stderr
    assert "sk-cli-new-key" not in result.output
    assert (await backend.get(ref, scope=scope)).reveal() == "sk-cli-new-key"
