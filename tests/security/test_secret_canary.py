"""Canary: secret values run through a full flow and are then searched for everywhere.

Canary values are stored with `bulkhead secrets put` (CLI, real database), resolved by the
running app's `SecretCache` (which registers them for scrubbing), echoed the way a failing
provider SDK echoes a key, and surrounded by ingest, chat (local provider) and validation
errors. Then captured logs, spans, every HTTP response (body and headers), audit rows and
every text, jsonb and bytea column of the database are searched: zero occurrences.

Still to add when the OpenAI/Anthropic providers land (issue 6): a chain whose first
provider is the OpenAI emulator answering 401 "Incorrect API key provided: <key>" with the
canary key, so the real SDK exception goes through the provider layer's scrubbing, the
cache's invalidate-and-refetch-once, and failover to the next provider. Until then the
401 echo is reproduced below by logging and raising the same message from app code.
"""

from __future__ import annotations

import asyncio
import functools
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
from app.secrets.cache import SecretCache
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant

Client = AsyncTestClient[Litestar]

DOC = "# Expenses\n\nMeals are reimbursed up to 40 euros per day on business trips.\n"


async def _resolve_in_app(client: Client, app: Litestar, ref: SecretRef, tenant: str) -> None:
    """Resolve `ref` through the app's own cache, in the app's event loop."""
    cache: SecretCache = app.state.resources.secret_cache
    scope = TenantScope(tenant_id=tenant, subject="provider-layer", roles=frozenset())
    call = functools.partial(
        client.blocking_portal.call, functools.partial(cache.get, ref, scope=scope)
    )
    value: SecretValue = await asyncio.to_thread(call)
    # Stand-in for a provider SDK failing with the key it was given (issue 6 replaces this).
    message = f"Error code: 401 - Incorrect API key provided: {value.reveal()}"
    log = logging.getLogger("app.llm.provider")
    log.warning("provider attempt failed: %s", message)
    try:
        raise PermissionError(message)
    except PermissionError:
        log.exception("provider %s rejected the key", "openai")


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
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = uuid.uuid4().hex
    canaries = {
        "openai": f"sk-proj-canary{marker}",  # credential-shaped
        "plain": f"canary-plain-{marker}",  # no known shape: only registration removes it
    }
    tenant = await make_tenant("canary")
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

    for name in canaries:
        await _resolve_in_app(client, app, SecretRef(tenant_id=tenant, name=name), tenant)

    responses.append(
        await client.post(
            "/v1/documents",
            json={"documents": [{"id": "expenses", "title": "Expenses", "text": DOC}]},
            headers=headers,
        )
    )
    responses.append(
        await client.post("/v1/chat", json={"message": "What is the meal limit?"}, headers=headers)
    )
    # Validation errors that quote what they were given.
    for body in (
        {"message": "hi", "api_key": canaries["openai"]},
        {"message": "hi", "base_url": f"http://x/{canaries['plain']}"},
        {"message": canaries["plain"] * 1000},
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
    assert [r.status_code for r in responses] == [201, 200, 422, 422, 422, 422, 401]
    await asyncio.sleep(0.3)  # the audit writer flushes every 50 ms in tests

    haystacks: dict[str, list[str]] = {
        "cli": cli_outputs,
        "logs": [caplog.text, *(r.getMessage() for r in caplog.records)],
        "spans": [span.to_json() for span in spans.get_finished_spans()],
        "responses": [r.text + repr(dict(r.headers)) for r in responses],
        "database": await _all_database_text(settings.db.url),
    }
    assert any("provider attempt failed" in text for text in haystacks["logs"])
    assert any("[REDACTED]" in text for text in haystacks["logs"])
    assert any("audit_events" in text and tenant in text for text in haystacks["database"])
    for where, texts in haystacks.items():
        for canary in canaries.values():
            leaks = [text[:200] for text in texts if canary in text]
            assert not leaks, f"canary found in {where}: {leaks}"
