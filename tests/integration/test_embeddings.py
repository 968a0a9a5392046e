"""OpenAI embeddings through the real `openai` SDK against the loopback emulator.

Batching, retries (429 then success), key refetch on 401, scrubbing of an echoed key, exhausted
5xx, the per-tenant breaker, and the exported `embeddings {model}` spans and metrics. The key
resolver is the in-memory `KeyRing` of the chain tests (the secrets backend has its own tests).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.llm.breaker import BreakerPolicy, BreakerRegistry
from app.llm.clients import SdkClients
from app.llm.embeddings import OpenAIEmbedder
from app.llm.router import ChainPolicy, ProvidersUnavailable
from app.tenancy.scope import Role, TenantScope
from tests.conftest import METRICS
from tests.integration.test_provider_chain import KeyRing
from tests.provider_emulator import EmulatorServer, embedding

MODEL = "text-embedding-3-small"
POLICY = ChainPolicy(
    connect_timeout=0.5,
    attempt_timeout=1.0,
    request_deadline=5.0,
    max_retries=2,
    backoff_base=0.005,
    backoff_cap=0.01,
    retry_after_cap=1.0,
    breaker=BreakerPolicy(consecutive_failures=3, open_seconds=30),
)
GOOD_KEY = "sk-good-embeddings-0123456789"
Make = Callable[..., OpenAIEmbedder]


def _scope(tenant_id: str | None = None) -> TenantScope:
    return TenantScope(
        tenant_id=tenant_id or f"e-{uuid.uuid4().hex[:10]}",
        subject="alice@example.com",
        roles=frozenset({Role.INGEST}),
        credential_id="cred-emb",
    )


@pytest.fixture
async def make(emulator: EmulatorServer) -> AsyncIterator[Make]:
    clients = SdkClients()

    def build(
        scope: TenantScope,
        model: str = MODEL,
        keys: list[str] | None = None,
        batch_size: int = 16,
        breakers: BreakerRegistry | None = None,
        ring: KeyRing | None = None,
        policy: ChainPolicy = POLICY,
    ) -> OpenAIEmbedder:
        return OpenAIEmbedder(
            model=model,
            size=32,
            dimensions=32,
            secret=f"tenants/{scope.tenant_id}/openai",
            base_url=emulator.url + "/v1",
            resolver=ring or KeyRing({"openai": list(keys or [GOOD_KEY])}),
            policy=policy,
            breakers=breakers or BreakerRegistry(POLICY.breaker),
            batch_size=batch_size,
            clients=clients,
        )

    yield build
    await clients.aclose()


def _attempts(spans: InMemorySpanExporter, model: str) -> list[ReadableSpan]:
    found = [s for s in spans.get_finished_spans() if s.name == f"embeddings {model}"]
    return sorted(found, key=lambda s: s.start_time or 0)


def _histogram_count(name: str, **attributes: str) -> int:
    data = METRICS.get_metrics_data()
    count = 0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if all(point.attributes.get(k) == v for k, v in attributes.items()):
                        count += int(point.count)
    return count


async def test_texts_are_embedded_in_batches_with_usage_and_spans(
    make: Make, emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    model = f"{MODEL}-batch-{uuid.uuid4().hex[:6]}"
    texts = [f"hotel night limit {n}" for n in range(5)]
    durations = _histogram_count(
        "gen_ai.client.operation.duration", **{"gen_ai.request.model": model}
    )
    before = emulator.calls["/v1/embeddings"]
    scope = _scope()

    result = await make(scope, model=model, batch_size=2).embed(texts, scope=scope)

    assert emulator.calls["/v1/embeddings"] - before == 3, "5 texts in batches of 2"
    assert len(result.vectors) == len(texts)
    for vector, text in zip(result.vectors, texts, strict=True):
        assert vector == pytest.approx(embedding(text, 32), abs=1e-6), "in input order"
    assert result.input_tokens == 20, "the emulator counts 4 words per text"
    attempts = _attempts(spans, model)
    assert len(attempts) == 3
    for span in attempts:
        attributes = dict(span.attributes or {})
        assert attributes["gen_ai.operation.name"] == "embeddings"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == model
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == emulator.port
        assert attributes["bulkhead.tenant.id"] == scope.tenant_id
        assert attributes["enduser.id"] == scope.enduser_id != scope.subject
        assert attributes["bulkhead.credential.id"] == "cred-emb"
        assert attributes["bulkhead.attempt"] == 1
        assert "error.type" not in attributes
    assert [dict(s.attributes or {})["gen_ai.usage.input_tokens"] for s in attempts] == [8, 8, 4]
    after = _histogram_count("gen_ai.client.operation.duration", **{"gen_ai.request.model": model})
    assert after - durations == 3
    assert (
        _histogram_count(
            "gen_ai.client.token.usage",
            **{"gen_ai.request.model": model, "gen_ai.operation.name": "embeddings"},
        )
        == 3
    )


async def test_rate_limited_then_success_is_retried_after_retry_after(
    make: Make, spans: InMemorySpanExporter
) -> None:
    model = f"{MODEL}-{uuid.uuid4().hex[:6]}@429:0.05x1"
    scope = _scope()
    result = await make(scope, model=model).embed(["train class"], scope=scope)
    assert result.vectors[0] == pytest.approx(embedding("train class", 32), abs=1e-6)
    attempts = _attempts(spans, model)
    assert [dict(s.attributes or {}).get("error.type") for s in attempts] == ["rate_limited", None]
    assert [dict(s.attributes or {})["bulkhead.attempt"] for s in attempts] == [1, 2]
    waited = (attempts[1].start_time or 0) - (attempts[0].end_time or 0)
    assert waited >= 0.04e9, "Retry-After 0.05 s was honoured"


async def test_refused_key_is_refetched_once_and_never_exported(
    make: Make, spans: InMemorySpanExporter
) -> None:
    revoked = f"sk-revoked-{uuid.uuid4().hex}"
    ring = KeyRing({"openai": [revoked, GOOD_KEY]})
    model = f"{MODEL}-{uuid.uuid4().hex[:6]}"
    scope = _scope()
    result = await make(scope, model=model, ring=ring).embed(["laptop policy"], scope=scope)
    assert len(result.vectors) == 1
    assert ring.invalidated == ["openai"]
    attempts = _attempts(spans, model)
    assert [dict(s.attributes or {}).get("error.type") for s in attempts] == ["auth", None]
    exported = repr([(s.attributes, s.status.description, s.events) for s in attempts])
    assert revoked not in exported
    assert revoked[3:] not in exported


async def test_revoked_key_fails_with_a_scrubbed_providers_unavailable(
    make: Make, spans: InMemorySpanExporter
) -> None:
    revoked = f"sk-revoked-{uuid.uuid4().hex}"
    ring = KeyRing({"openai": [revoked]})
    model = f"{MODEL}-{uuid.uuid4().hex[:6]}"
    scope = _scope()
    embedder = make(scope, model=model, ring=ring)
    with pytest.raises(ProvidersUnavailable) as caught:
        await embedder.embed(["x"], scope=scope)
    assert caught.value.code == "providers_unavailable"
    assert int(caught.value.headers["Retry-After"]) >= 1
    assert revoked not in caught.value.detail
    assert "[redacted]" in caught.value.detail
    attempts = _attempts(spans, model)
    assert len(attempts) == 2, "one refetch, then give up"
    assert all(revoked not in (s.status.description or "") for s in attempts)


async def test_server_errors_exhaust_retries_then_open_only_that_tenants_breaker(
    make: Make, emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    model = f"{MODEL}-{uuid.uuid4().hex[:6]}@500"
    breakers = BreakerRegistry(POLICY.breaker)
    first, other = _scope(), _scope()
    embedder = make(first, model=model, breakers=breakers)
    with pytest.raises(ProvidersUnavailable) as caught:
        await embedder.embed(["x"], scope=first)
    assert "server_error" in caught.value.detail
    attempts = _attempts(spans, model)
    assert [dict(s.attributes or {})["bulkhead.attempt"] for s in attempts] == [1, 2, 3]
    assert {dict(s.attributes or {})["error.type"] for s in attempts} == {"server_error"}
    # Three consecutive failures opened the first tenant's circuit: no call goes out.
    before = emulator.calls["/v1/embeddings"]
    with pytest.raises(ProvidersUnavailable) as refused:
        await embedder.embed(["x"], scope=first)
    assert "circuit_open" in refused.value.detail
    assert emulator.calls["/v1/embeddings"] == before
    # Another tenant's circuit for the same model is closed: its call does go out.
    with pytest.raises(ProvidersUnavailable):
        await make(other, model=model, breakers=breakers).embed(["x"], scope=other)
    assert emulator.calls["/v1/embeddings"] == before + 3


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("hang", "timeout"), ("slow:2", "timeout"), ("malformed", "malformed_response")],
)
async def test_hangs_and_malformed_bodies_end_in_a_bounded_503(
    make: Make, spans: InMemorySpanExporter, fault: str, reason: str
) -> None:
    model = f"{MODEL}-{uuid.uuid4().hex[:6]}@{fault}"
    scope = _scope()
    quick = ChainPolicy(
        connect_timeout=0.2,
        attempt_timeout=0.2,
        request_deadline=2.0,
        max_retries=1,
        backoff_base=0.005,
        backoff_cap=0.01,
    )
    embedder = make(scope, model=model, policy=quick)
    started = time.monotonic()
    with pytest.raises(ProvidersUnavailable, match=reason):
        await embedder.embed(["x"], scope=scope)
    assert time.monotonic() - started < 1.5, "two attempts of 0.2 s, not the emulator's hang"
    attempts = _attempts(spans, model)
    assert [dict(s.attributes or {})["error.type"] for s in attempts] == [reason, reason]
