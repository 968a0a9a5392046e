"""`POST /v1/chat` over HTTP with providers on the loopback emulator.

SSE streaming, failover, a break after content, every entry failing, and the usage ledger
behind `/v1/admin/usage`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.db.pool import tenant_transaction
from app.tenancy.scope import Role, TenantScope
from tests.conftest import AuthHeaders
from tests.integration.conftest import KEYS, Chain, LlmTenant, sse_events
from tests.provider_emulator import EmulatorServer, refused_url

Client = AsyncTestClient[Litestar]
QUESTION = {"message": "How much is the hotel limit per night?"}


def _events(body: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, data) for name, data in sse_events(body) if name]


def _openai(emulator: EmulatorServer) -> str:
    return emulator.url + "/v1"


async def test_stream_sends_meta_passages_deltas_citations_done(
    client: Client, llm_tenant: LlmTenant, auth: AuthHeaders
) -> None:
    tenant = await llm_tenant([("local", "", None)])
    response = await client.post("/v1/chat", json=QUESTION | {"stream": True}, headers=auth(tenant))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    events = _events(response.text)
    names = [name for name, _ in events]
    assert names[:2] == ["meta", "passages"]
    assert names[-2:] == ["citations", "done"]
    assert set(names[2:-2]) == {"delta"}
    answer = "".join(data["text"] for name, data in events if name == "delta")
    assert "180 euros per night in every city. [1]" in answer
    meta, passages, citations, done = events[0][1], events[1][1], events[-2][1], events[-1][1]
    assert meta["trace_id"] == response.headers["x-trace-id"]
    assert passages["passages"][0]["document_id"] == "travel"
    assert citations["citations"][0]["document_id"] == "travel"
    assert (done["provider"], done["model"]) == ("local", "extractive")
    assert done["usage"]["output_tokens"] > 0
    assert done["cited"] == [1]


async def test_stream_fails_over_before_the_first_token(
    client: Client,
    llm_tenant: LlmTenant,
    auth: AuthHeaders,
    emulator: EmulatorServer,
) -> None:
    chain: Chain = [
        ("openai", "gpt-4o-mini@429:30", _openai(emulator)),
        ("anthropic", "claude-haiku-4-5", emulator.url),
    ]
    tenant = await llm_tenant(chain)
    response = await client.post("/v1/chat", json=QUESTION | {"stream": True}, headers=auth(tenant))
    events = _events(response.text)
    assert events[-1][0] == "done"
    assert events[-1][1]["provider"] == "anthropic"
    assert "".join(d["text"] for n, d in events if n == "delta").startswith("Hotel stays")


async def test_break_after_content_ends_with_an_error_event(
    client: Client,
    llm_tenant: LlmTenant,
    auth: AuthHeaders,
    emulator: EmulatorServer,
    app_pool: asyncpg.Pool,
) -> None:
    chain: Chain = [("anthropic", "claude@disconnect", emulator.url), ("local", "", None)]
    tenant = await llm_tenant(chain)
    async with asyncio.timeout(5):  # never a hang
        response = await client.post(
            "/v1/chat", json=QUESTION | {"stream": True}, headers=auth(tenant)
        )
    events = _events(response.text)
    assert [n for n, _ in events] == ["meta", "passages", "delta", "delta", "error"]
    assert events[-1][1]["code"] == "provider_stream_interrupted"
    scope = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    async with tenant_transaction(app_pool, scope=scope) as connection:
        outcomes = await connection.fetch("SELECT outcome FROM usage")
    assert [r["outcome"] for r in outcomes] == ["stream_interrupted"]


async def test_every_entry_failing_is_503_with_retry_after_and_no_key(
    client: Client,
    llm_tenant: LlmTenant,
    auth: AuthHeaders,
    emulator: EmulatorServer,
    app_pool: asyncpg.Pool,
) -> None:
    chain: Chain = [
        ("openai", "gpt-4o-mini", refused_url()),
        ("anthropic", "claude@401", emulator.url),
        ("openai", "gpt-4o-mini@503", _openai(emulator)),
    ]
    tenant = await llm_tenant(chain)
    for stream in (False, True):
        response = await client.post(
            "/v1/chat", json=QUESTION | {"stream": stream}, headers=auth(tenant)
        )
        assert response.status_code == 503
        assert response.json()["code"] == "providers_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        for key in KEYS.values():
            assert key not in response.text
    scope = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    async with asyncio.timeout(5):
        while True:
            async with tenant_transaction(app_pool, scope=scope) as connection:
                usage = await connection.fetch(
                    "SELECT trace_id, provider, model, outcome, final FROM usage ORDER BY id"
                )
                audited = await connection.fetch(
                    "SELECT status FROM audit_events WHERE route = '/v1/chat'"
                )
            if len(audited) == 2:
                break
            await asyncio.sleep(0.02)
    # Every attempt is in the ledger under its own provider and model (none under `none`),
    # the request's last failure is its final row.
    requests: dict[str, list[asyncpg.Record]] = {}
    for row in usage:
        requests.setdefault(row["trace_id"], []).append(row)
    assert len(requests) == 2
    for rows in requests.values():
        tried = [(r["provider"], r["model"], r["outcome"]) for r in rows]
        assert tried[:3] == [
            ("openai", "gpt-4o-mini", "connection_refused"),
            ("anthropic", "claude@401", "auth"),
            ("anthropic", "claude@401", "auth"),
        ]
        assert set(tried[3:]) == {("openai", "gpt-4o-mini@503", "server_error")}
        assert [r["final"] for r in rows] == [False] * (len(rows) - 1) + [True]
    assert [r["status"] for r in audited] == [503, 503]


async def test_admin_usage_report_by_user_provider_model_day(
    client: Client,
    llm_tenant: LlmTenant,
    auth: AuthHeaders,
    emulator: EmulatorServer,
) -> None:
    chain: Chain = [("openai", "gpt-4o-mini", _openai(emulator))]
    tenant = await llm_tenant(chain)
    for user in ("alice", "alice", "bob"):
        response = await client.post("/v1/chat", json=QUESTION, headers=auth(tenant, user=user))
        assert response.status_code == 200
        assert response.json()["provider"] == "openai"
    admin = auth(tenant, user="root", roles=(Role.ADMIN,))
    report = (await client.get("/v1/admin/usage", headers=admin)).json()["usage"]
    by_user = {row["user_id"]: row for row in report}
    assert set(by_user) == {"alice", "bob"}
    assert by_user["alice"]["requests"] == 2
    assert by_user["alice"]["provider"] == "openai"
    assert by_user["alice"]["model"] == "gpt-4o-mini"
    assert by_user["alice"]["output_tokens"] > 0
    assert by_user["alice"]["cost_usd"] > 0, "priced from the table in settings"
    assert len(by_user["alice"]["day"]) == 10
    only_bob = await client.get("/v1/admin/usage", params={"user": "bob"}, headers=admin)
    assert [row["user_id"] for row in only_bob.json()["usage"]] == ["bob"]
    assert (await client.get("/v1/admin/usage", headers=auth(tenant))).status_code == 403
