"""Canary: secret values run through a full flow and are then searched for everywhere.

Canary values are stored with `bulkhead secrets put` (CLI, real database) as the tenant's
OpenAI and Anthropic keys. The tenant's chain is OpenAI (emulator) → Anthropic (emulator) →
local, and both emulated providers answer 401 with a message that echoes the key, as the real
APIs do: the real SDK exceptions go through the provider layer (scrubbing, invalidate and
refetch once) and the chat fails over to `local`, streamed and not. Around that: ingest and
validation errors that quote what they were given. Then captured logs, spans, every HTTP
response (body and headers), audit rows and every text, jsonb and bytea column of the
database are searched: zero occurrences.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import httpx
import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.cli import main
from app.config import Settings, get_settings
from app.tenancy.manifest import ChainEntry, LlmSpec
from tests.conftest import AuthHeaders, TenantFactory, flush_audit, wait_for_tenant
from tests.provider_emulator import EmulatorServer

Client = AsyncTestClient[Litestar]

DOC = "# Expenses\n\nMeals are reimbursed up to 40 euros per day on business trips.\n"


async def _all_database_text(owner_url: str) -> list[str]:
    """Every text-like value of every table in the database (as the owner/superuser)."""
    connection = await asyncpg.connect(owner_url)
    try:
        columns = await connection.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public'"
            " AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'bytea')"
        )
        found: list[str] = []
        for column in columns:
            cast = "encode(%s, 'escape')" if column["data_type"] == "bytea" else "%s::text"
            expression = cast % f'"{column["column_name"]}"'
            rows = await connection.fetch(
                f'SELECT {expression} AS v FROM "{column["table_name"]}"'  # noqa: S608 - catalog names
            )
            found.extend(
                f"{column['table_name']}.{column['column_name']}: {r['v']}" for r in rows if r["v"]
            )
        return found
    finally:
        await connection.close()


async def test_canary_secret_values_appear_nowhere(
    client: Client,
    app: Litestar,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    spans: InMemorySpanExporter,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    emulator: EmulatorServer,
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = uuid.uuid4().hex
    canaries = {
        "openai": f"sk-proj-canary{marker}",  # credential-shaped
        "anthropic": f"canary-plain-{marker}",  # no known shape: only registration removes it
    }
    tenant = f"canary-{marker[:10]}"
    chain = (
        ChainEntry(
            provider="openai",
            model="gpt-4o-mini@401",
            secret=f"tenants/{tenant}/openai",
            base_url=emulator.url + "/v1",
        ),
        ChainEntry(
            provider="anthropic",
            model="claude-haiku-4-5@401",
            secret=f"tenants/{tenant}/anthropic",
            base_url=emulator.url,
        ),
        ChainEntry(provider="local"),
    )
    await make_tenant(tenant_id=tenant, llm=LlmSpec(chain=chain))
    await wait_for_tenant(app, tenant)
    headers = auth(tenant)
    assert settings.db.url is not None
    for key, value in {
        "DATABASE_URL": settings.db.url,
        "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(settings.master_key_path),
        "BULKHEAD_DATA_DIR": str(settings.data_dir),
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    responses: list[httpx.Response] = []
    cli_outputs: list[str] = []
    try:
        for name, value in canaries.items():
            result = await asyncio.to_thread(
                CliRunner().invoke,
                main,
                ["secrets", "put", f"tenants/{tenant}/{name}"],
                input=value,
            )
            assert result.exit_code == 0, result.output
            cli_outputs.append(result.output)
    finally:
        get_settings.cache_clear()

    responses.append(
        await client.post(
            "/v1/documents",
            json={"documents": [{"id": "expenses", "title": "Expenses", "text": DOC}]},
            headers=headers,
        )
    )
    calls_before = emulator.calls.copy()
    question = {"message": "How much are meals reimbursed per day?"}
    chat = await client.post("/v1/chat", json=question, headers=headers)
    responses.append(chat)
    streamed = await client.post("/v1/chat", json=question | {"stream": True}, headers=headers)
    responses.append(streamed)
    # Validation errors that quote what they were given.
    for body in (
        {"message": "hi", "api_key": canaries["openai"]},
        {"message": "hi", "base_url": f"http://x/{canaries['anthropic']}"},
        {"message": canaries["anthropic"] * 1000},
    ):
        responses.append(await client.post("/v1/chat", json=body, headers=headers))
    responses.append(
        await client.post(
            "/v1/documents",
            json={
                "documents": [
                    {"title": "t", "text": "x", "metadata": {"tenant_id": canaries["openai"]}}
                ]
            },
            headers=headers,
        )
    )
    responses.append(
        await client.get("/v1/documents", headers={"Authorization": f"Bearer {canaries['openai']}"})
    )
    assert [r.status_code for r in responses] == [201, 200, 200, 422, 422, 422, 422, 401]
    # Both providers were really called with the canary keys, refused them, and the chain fell
    # over to `local`, streamed and not.
    assert chat.json()["provider"] == "local"
    assert "40 euros" in chat.json()["answer"]
    assert "event: done" in streamed.text
    assert '"provider":"local"' in streamed.text.replace(" ", "")
    called = {path: n - calls_before.get(path, 0) for path, n in emulator.calls.items()}
    assert called.get("/v1/chat/completions", 0) >= 2  # each request, plus one refetch retry
    assert called.get("/v1/messages", 0) >= 2
    await flush_audit(client)  # every row is queued before its response starts

    haystacks: dict[str, list[str]] = {
        "cli": cli_outputs,
        "logs": [caplog.text, *(r.getMessage() for r in caplog.records)],
        "spans": [span.to_json() for span in spans.get_finished_spans()],
        "responses": [r.text + repr(dict(r.headers)) for r in responses],
        "database": await _all_database_text(settings.db.url),
    }
    assert any(
        span.attributes and span.attributes.get("error.type") for span in spans.get_finished_spans()
    ), "the refused attempts must be visible in the spans"
    assert any("audit_events" in text and tenant in text for text in haystacks["database"])
    for where, texts in haystacks.items():
        for canary in canaries.values():
            leaks = [text[:200] for text in texts if canary in text]
            assert not leaks, f"canary found in {where}: {leaks}"
