"""Redaction end to end: what the provider emulator receives, and what ingestion indexes.

The tenant's chain is OpenAI on the loopback emulator (real `openai` SDK); the emulator keeps
the raw request bodies it received, so the test reads exactly what left Bulkhead.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.secrets.local import LocalSecretsBackend
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry, EmbeddingEndpoint, LlmSpec, PrivacySpec, RetrievalSpec
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant
from tests.provider_emulator import EmulatorServer

Client = AsyncTestClient[Litestar]
OPENAI_KEY = "sk-proj-tenantkeyREDACTIONtest123"
PASTED_KEY = "sk-proj-PastedIntoTheWiki0123456789"
AWS_ID = "AKIAIOSFODNN7EXAMPLE"


async def _tenant(
    app: Litestar,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
    kek: bytes,
    emulator: EmulatorServer,
    redact: tuple[str, ...],
) -> str:
    tenant = f"red-{uuid.uuid4().hex[:10]}"
    chain = (
        ChainEntry(
            provider="openai",
            model="gpt-4o-mini",
            secret=f"tenants/{tenant}/openai",
            base_url=emulator.url + "/v1",
        ),
    )
    await make_tenant(
        tenant_id=tenant, llm=LlmSpec(chain=chain), privacy=PrivacySpec(redact=redact)
    )
    await wait_for_tenant(app, tenant)
    scope = TenantScope(tenant_id=tenant, subject="ops", roles=frozenset())
    await LocalSecretsBackend(app_pool, kek).put(
        SecretRef(tenant, "openai"), SecretValue(OPENAI_KEY), scope=scope
    )
    return tenant


def _received_with(emulator: EmulatorServer, needle: str) -> str:
    bodies = [b.decode() for _, b in emulator.app.bodies if needle.encode() in b]
    assert len(bodies) == 1, f"expected one provider request carrying {needle!r}"
    return bodies[0]


async def test_provider_receives_redacted_question_and_context(
    client: Client,
    app: Litestar,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
    kek: bytes,
    emulator: EmulatorServer,
    spans: InMemorySpanExporter,
) -> None:
    tenant = await _tenant(
        app, make_tenant, app_pool, kek, emulator, ("credentials", "email", "credit_card")
    )
    document = (
        "## Deploy runbook\nThe deploy bot uses the key "
        f"{PASTED_KEY} and the AWS id {AWS_ID}; ask ops@acme.example for access.\n"
    )
    ingested = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "runbook", "title": "Runbook", "text": document}]},
        headers=auth(tenant),
    )
    assert ingested.status_code == 201
    nonce = uuid.uuid4().hex
    question = (
        f"Deploy runbook {nonce}: my card 4111 1111 1111 1111 and order 4111 1111 1111 1112,"
        " mail me at jane@home.example, my token is Bearer abcdefgh.ijklmnop.qrstuvwx"
    )
    answered = await client.post("/v1/chat", json={"message": question}, headers=auth(tenant))
    assert answered.status_code == 200, answered.text

    sent = _received_with(emulator, nonce)
    prompt = json.dumps(json.loads(sent)["messages"])
    for raw in (PASTED_KEY, AWS_ID, "ops@acme.example", "jane@home.example"):
        assert raw not in sent
    assert "4111 1111 1111 1111" not in sent
    assert "abcdefgh.ijklmnop.qrstuvwx" not in sent
    # The Luhn-invalid order number is not a card and goes through unchanged.
    assert "4111 1111 1111 1112" in prompt
    assert "[REDACTED:credit_card]" in prompt
    assert "[REDACTED:email]" in prompt
    assert "Bearer [REDACTED:credentials]" in prompt
    # The retrieved context reached the provider, already redacted at ingestion.
    assert "Deploy runbook" in prompt
    assert prompt.count("[REDACTED:credentials]") >= 3

    chat_span = next(s for s in spans.get_finished_spans() if s.name == "chat")
    attributes = dict(chat_span.attributes or {})
    assert attributes["bulkhead.redaction.credit_card"] == 1
    assert attributes["bulkhead.redaction.email"] == 1
    assert attributes["bulkhead.redaction.credentials"] == 1
    assert attributes["bulkhead.redaction.count"] == 3
    for span in spans.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert "jane@home.example" not in str(value)


async def test_ingestion_indexes_redacted_text(
    client: Client,
    app: Litestar,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
    kek: bytes,
    emulator: EmulatorServer,
    spans: InMemorySpanExporter,
) -> None:
    tenant = await _tenant(app, make_tenant, app_pool, kek, emulator, ("credentials",))
    document = (
        "## Wiki\nTemporary credentials for the staging bucket: "
        f"{AWS_ID} with secret key wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY9q. "
        "Questions to lead@acme.example.\n"
    )
    ingested = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "wiki", "title": "Wiki", "text": document}]},
        headers=auth(tenant),
    )
    assert ingested.status_code == 201
    found = await client.post(
        "/v1/search", json={"query": "staging bucket credentials"}, headers=auth(tenant)
    )
    assert found.status_code == 200
    texts = [hit["text"] for hit in found.json()["results"]]
    assert texts
    assert all(AWS_ID not in text for text in texts)
    assert all("wJalrXUtnFEMI" not in text for text in texts)
    assert any(text.count("[REDACTED:credentials]") == 2 for text in texts)
    # Only credentials were asked for: the email stays searchable.
    assert any("lead@acme.example" in text for text in texts)
    ingest_span = next(s for s in spans.get_finished_spans() if s.name == "ingest documents")
    assert dict(ingest_span.attributes or {})["bulkhead.redaction.credentials"] == 2


async def test_completions_history_and_instructions_are_redacted(
    client: Client,
    app: Litestar,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
    kek: bytes,
    emulator: EmulatorServer,
) -> None:
    tenant = await _tenant(app, make_tenant, app_pool, kek, emulator, ("credentials", "email"))
    nonce = uuid.uuid4().hex
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": "auto",
            "messages": [
                {"role": "system", "content": "Reply to ops@corp.example if unsure."},
                {"role": "user", "content": f"my deploy key is {PASTED_KEY}"},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": f"What is the hotel limit? {nonce}"},
            ],
        },
        headers=auth(tenant),
    )
    assert response.status_code == 200, response.text
    sent = _received_with(emulator, nonce)
    assert PASTED_KEY not in sent
    assert "ops@corp.example" not in sent
    prompt = json.dumps(json.loads(sent)["messages"])
    assert "my deploy key is [REDACTED:credentials]" in prompt
    assert "Reply to [REDACTED:email] if unsure." in prompt


async def test_embeddings_provider_receives_redacted_document_text(
    client: Client,
    app: Litestar,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
    kek: bytes,
    emulator: EmulatorServer,
) -> None:
    tenant = f"red-{uuid.uuid4().hex[:10]}"
    await make_tenant(
        tenant_id=tenant,
        retrieval=RetrievalSpec(
            embedder="openai:text-embedding-3-small/256",
            openai=EmbeddingEndpoint(
                secret=f"tenants/{tenant}/openai", base_url=emulator.url + "/v1"
            ),
        ),
        privacy=PrivacySpec(redact=("credentials", "email")),
    )
    await wait_for_tenant(app, tenant)
    scope = TenantScope(tenant_id=tenant, subject="ops", roles=frozenset())
    await LocalSecretsBackend(app_pool, kek).put(
        SecretRef(tenant, "openai"), SecretValue(OPENAI_KEY), scope=scope
    )
    nonce = uuid.uuid4().hex
    text = f"Runbook {nonce}: deploy with {PASTED_KEY}, escalate to oncall@acme.example."
    ingested = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "runbook", "title": "Runbook", "text": text}]},
        headers=auth(tenant),
    )
    assert ingested.status_code == 201, ingested.text
    sent = [b.decode() for path, b in emulator.app.bodies if nonce.encode() in b]
    assert sent, "the embeddings request never reached the emulator"
    assert all(
        path.endswith("/embeddings") for path, b in emulator.app.bodies if nonce.encode() in b
    )
    for body in sent:
        assert PASTED_KEY not in body
        assert "oncall@acme.example" not in body
        assert "[REDACTED:credentials]" in body
        assert "[REDACTED:email]" in body

    asked = uuid.uuid4().hex
    searched = await client.post(
        "/v1/search",
        json={"query": f"deploy runbook {asked} for mallory@evil.example"},
        headers=auth(tenant),
    )
    assert searched.status_code == 200, searched.text
    queries = [b.decode() for _, b in emulator.app.bodies if asked.encode() in b]
    assert len(queries) == 1, "the query is embedded by the provider exactly once"
    assert "mallory@evil.example" not in queries[0]
    assert "[REDACTED:email]" in queries[0]
