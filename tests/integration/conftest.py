"""Integration fixtures: tenants whose LLM chain points at the provider emulator."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.secrets.local import LocalSecretsBackend
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry, LlmSpec
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant

Client = AsyncTestClient[Litestar]
Chain = list[tuple[str, str, str | None]]
KEYS = {"openai": "sk-proj-HTTPTESTopenai98765", "anthropic": "sk-ant-HTTPTESTanthropic987"}
DOC = "## Hotels\nHotel stays are reimbursed up to 180 euros per night in every city.\n"


LlmTenant = Callable[[Chain], Awaitable[str]]


@pytest.fixture
def llm_tenant(
    app: Litestar,
    client: Client,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
    kek: bytes,
) -> LlmTenant:
    """Make a tenant whose chain is `(provider, model, base_url)` entries, keys stored."""

    async def make(chain: Chain) -> str:
        return await _tenant(
            app, client, make_tenant, auth, chain, LocalSecretsBackend(app_pool, kek)
        )

    return make


async def _tenant(
    app: Litestar,
    client: Client,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    chain: Chain,
    secrets: LocalSecretsBackend,
) -> str:
    tenant_id = f"llm-{uuid.uuid4().hex[:10]}"
    entries = tuple(
        ChainEntry(provider="local")
        if provider == "local"
        else ChainEntry(
            provider=provider,  # type: ignore[arg-type]
            model=model,
            secret=f"tenants/{tenant_id}/{provider}",
            base_url=url,
        )
        for provider, model, url in chain
    )
    await make_tenant(tenant_id=tenant_id, llm=LlmSpec(chain=entries))
    await wait_for_tenant(app, tenant_id)
    scope = TenantScope(tenant_id=tenant_id, subject="ops", roles=frozenset())
    for provider, key in KEYS.items():
        await secrets.put(SecretRef(tenant_id, provider), SecretValue(key), scope=scope)
    response = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "travel", "title": "Travel", "text": DOC}]},
        headers=auth(tenant_id),
    )
    assert response.status_code == 201
    return tenant_id


def sse_events(body: str) -> list[tuple[str, Any]]:
    """A server-sent event stream's `(event, data)` pairs, `[DONE]` left out.

    `event` is "" for an unnamed event (the OpenAI-style chunks of `/v1/chat/completions`).
    """
    events = []
    for frame in body.replace("\r\n", "\n").split("\n\n"):
        name, data = "", ""
        for line in frame.splitlines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data += line.removeprefix("data:").strip()
        if data and data != "[DONE]":
            events.append((name, json.loads(data)))
    return events
