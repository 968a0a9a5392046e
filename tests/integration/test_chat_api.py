"""`POST /v1/chat` end to end in-process: retrieval, local provider, citations, storage, spans."""

from __future__ import annotations

import uuid

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.chat import repository
from app.chat.crypto import ConversationCipher
from app.config import Settings
from app.db.pool import tenant_transaction
from app.tenancy.manifest import PrivacySpec
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant

Client = AsyncTestClient[Litestar]

POLICY = """# Travel

## Hotels
Hotel stays are reimbursed up to 180 euros per night in every city.

## Trains
Book second class for trips under four hours.
"""


async def _seed(client: Client, headers: dict[str, str]) -> None:
    response = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "travel", "title": "Travel policy", "text": POLICY}]},
        headers=headers,
    )
    assert response.status_code == 201


async def test_chat_answers_with_citations_and_trace_id(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders, spans: InMemorySpanExporter
) -> None:
    tenant, _ = tenant_pair
    await _seed(client, auth(tenant))
    response = await client.post(
        "/v1/chat", json={"message": "How much is the hotel limit per night?"}, headers=auth(tenant)
    )
    assert response.status_code == 200
    body = response.json()
    assert "180 euros per night" in body["answer"]
    assert "[1]" in body["answer"]
    assert body["citations"][0]["document_id"] == "travel"
    assert body["citations"][0]["marker"] == 1
    assert "180 euros" in body["citations"][0]["snippet"]
    assert (body["provider"], body["model"]) == ("local", "extractive")
    assert body["usage"]["input_tokens"] > 0
    assert body["usage"]["output_tokens"] > 0
    assert body["trace_id"] == response.headers["x-trace-id"]
    assert len(body["trace_id"]) == 32

    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert {"chat", "retrieval bm25", "chat chain", "chat extractive"} <= set(by_name)
    for name in ("chat", "retrieval bm25", "chat extractive"):
        attributes = dict(by_name[name].attributes or {})
        assert attributes["bulkhead.tenant.id"] == tenant
        assert attributes["enduser.id"] != "alice"
        assert format(by_name[name].context.trace_id, "032x") == body["trace_id"]
    llm = dict(by_name["chat extractive"].attributes or {})
    assert llm["gen_ai.provider.name"] == "local"
    assert llm["gen_ai.usage.output_tokens"] == body["usage"]["output_tokens"]
    assert "How much" not in str(llm)


async def test_conversation_continues_for_its_owner_only(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    await _seed(client, auth(tenant))
    first = (await client.post("/v1/chat", json={"message": "hotel?"}, headers=auth(tenant))).json()
    follow_up = {"message": "and trains?", "conversation_id": first["conversation_id"]}
    second = await client.post("/v1/chat", json=follow_up, headers=auth(tenant))
    assert second.status_code == 200
    assert second.json()["conversation_id"] == first["conversation_id"]
    stranger = await client.post("/v1/chat", json=follow_up, headers=auth(tenant, user="mallory"))
    assert stranger.status_code == 404
    unknown = {"message": "x", "conversation_id": str(uuid.uuid4())}
    missing = await client.post("/v1/chat", json=unknown, headers=auth(tenant))
    assert missing.status_code == 404


async def test_exchange_and_usage_are_recorded(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
    settings: Settings,
    kek: bytes,
) -> None:
    tenant, _ = tenant_pair
    await _seed(client, auth(tenant))
    body = (await client.post("/v1/chat", json={"message": "hotel?"}, headers=auth(tenant))).json()
    scope = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    cipher = ConversationCipher.from_settings(settings, kek)
    async with tenant_transaction(app_pool, scope=scope) as connection:
        turns = await repository.read_turns(
            connection,
            sealer=await cipher.sealer(connection, tenant_id=tenant),
            conversation_ids=[uuid.UUID(body["conversation_id"])],
        )
        usage = await connection.fetchrow(
            "SELECT * FROM usage WHERE trace_id = $1", body["trace_id"]
        )
    assert [(t.role, t.text) for t in turns] == [("user", "hotel?"), ("assistant", body["answer"])]
    answer = turns[1]
    assert answer.id == uuid.UUID(body["message_id"])
    assert [(c["marker"], c["document_id"], c["chunk_id"]) for c in answer.citations] == [
        (c["marker"], c["document_id"], c["chunk_id"]) for c in body["citations"]
    ]
    # The passages the answer was grounded in are kept with it (sealed).
    assert answer.context
    assert answer.context[0]["document_id"] == "travel"
    assert "180 euros" in answer.context[0]["text"]
    assert usage is not None
    assert (usage["user_id"], usage["provider"], usage["outcome"]) == ("alice", "local", "ok")
    assert usage["output_tokens"] == body["usage"]["output_tokens"]


async def test_tenant_that_opts_out_of_storage_keeps_no_messages(
    client: Client,
    app: Litestar,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
) -> None:
    tenant = await make_tenant("nostore", privacy=PrivacySpec(store_conversations=False))
    await wait_for_tenant(app, tenant)
    await _seed(client, auth(tenant))
    response = await client.post("/v1/chat", json={"message": "hotel?"}, headers=auth(tenant))
    assert response.status_code == 200
    scope = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    async with tenant_transaction(app_pool, scope=scope) as connection:
        assert await connection.fetchval("SELECT count(*) FROM messages") == 0
        assert await connection.fetchval("SELECT count(*) FROM usage") == 1


async def test_chat_input_is_validated(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    cases = [
        ({"message": ""}, 422),
        ({"message": "x" * 5000}, 422),
        ({"message": "x", "top_k": 0}, 422),
        ({"message": "x", "top_k": 51}, 422),
        ({"message": "x", "conversation_id": "not-a-uuid"}, 422),
        ({"message": "x", "api_base": "https://evil.example"}, 422),
        ({"message": "x", "model": "gpt-4o"}, 422),
        ({"message": "x", "stream": "yes"}, 422),
        ({}, 422),
    ]
    for payload, status in cases:
        response = await client.post("/v1/chat", json=payload, headers=auth(tenant))
        assert response.status_code == status, payload
        assert response.json()["code"] == "validation_error", payload
