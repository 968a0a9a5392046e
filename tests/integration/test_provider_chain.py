"""The provider chain against the real `openai` and `anthropic` SDKs and the loopback emulator.

Every injected fault, for both SDKs, streaming and not: what the caller gets, and the exported
span tree. The key resolver is an in-memory stand-in (the secrets backend has its own tests);
everything between the chain and the emulator's socket is real.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.config import LlmSettings
from app.llm.breaker import BreakerPolicy, BreakerRegistry
from app.llm.chains import build_chain
from app.llm.provider import Completion, CompletionRequest, ContextChunk
from app.llm.router import (
    AttemptRecord,
    ChainPolicy,
    ProviderChain,
    ProviderRejected,
    ProvidersUnavailable,
    StreamInterrupted,
)
from app.secrets.backend import SecretNotFound
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import Role, TenantScope
from tests.conftest import METRICS
from tests.provider_emulator import EmulatorServer, refused_url

PROVIDERS = ("openai", "anthropic")
OTHER = {"openai": "anthropic", "anthropic": "openai"}
# Short, but with room for a loaded 2-core machine: the emulator shares this process's GIL.
POLICY = ChainPolicy(
    connect_timeout=1.0,
    first_token_timeout=1.0,
    attempt_timeout=2.5,
    request_deadline=12.0,
    max_retries=1,
    backoff_base=0.005,
    backoff_cap=0.01,
    retry_after_cap=1.0,
    breaker=BreakerPolicy(consecutive_failures=3, open_seconds=0.3),
)
QUESTION = CompletionRequest(
    question="How much is the hotel limit?",
    context=(ContextChunk(1, "travel", "c1", "Travel", "Hotels: 180 euros per night.", 1.0),),
    model="",
)


@dataclass
class KeyRing:
    """In-memory `SecretResolver`: successive values per ref (a rotation), invalidations."""

    values: dict[str, list[str]]
    invalidated: list[str] = field(default_factory=list)

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        assert ref.tenant_id == scope.tenant_id
        return SecretValue(self.values[ref.name][0])

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        self.invalidated.append(ref.name)
        if len(self.values[ref.name]) > 1:
            self.values[ref.name].pop(0)


def _scope() -> TenantScope:
    return TenantScope(
        tenant_id=f"t-{uuid.uuid4().hex[:10]}",
        subject="alice@example.com",
        roles=frozenset({Role.CHAT}),
        credential_id="cred-1",
    )


def _base(provider: str, url: str) -> str:
    return url + "/v1" if provider == "openai" else url


def _entry(scope: TenantScope, provider: str, model: str, url: str) -> ChainEntry:
    return ChainEntry(
        provider=provider,  # type: ignore[arg-type]
        model=model,
        secret=f"tenants/{scope.tenant_id}/{provider}",
        base_url=_base(provider, url),
    )


KEYS = {"openai": "sk-proj-TESTKEYopenai0123456789", "anthropic": "sk-ant-TESTKEYanthropic0123"}


def _chain(
    scope: TenantScope,
    entries: Sequence[ChainEntry],
    keys: KeyRing | None = None,
    breakers: BreakerRegistry | None = None,
) -> tuple[ProviderChain, KeyRing]:
    ring = keys or KeyRing({name: [value] for name, value in KEYS.items()})
    chain = build_chain(
        tuple(entries),
        resolver=ring,
        settings=LlmSettings(),
        breakers=breakers or BreakerRegistry(POLICY.breaker),
    )
    chain.policy = POLICY
    return chain, ring


@dataclass
class Outcome:
    deltas: list[str]
    completion: Completion | None
    error: Exception | None


async def _ask(
    chain: ProviderChain,
    scope: TenantScope,
    *,
    stream: bool,
    close: bool = True,
    ledger: list[AttemptRecord] | None = None,
) -> Outcome:
    try:
        return await _ask_once(chain, scope, stream=stream, ledger=ledger)
    finally:
        if close:
            await chain.aclose()


async def _ask_once(
    chain: ProviderChain,
    scope: TenantScope,
    *,
    stream: bool,
    ledger: list[AttemptRecord] | None = None,
) -> Outcome:
    deltas: list[str] = []
    try:
        if not stream:
            completion = await chain.complete(scope=scope, request=QUESTION, attempts=ledger)
            return Outcome([], completion, None)
        async for event in chain.stream(scope=scope, request=QUESTION, attempts=ledger):
            if isinstance(event, Completion):
                return Outcome(deltas, event, None)
            deltas.append(event)
    except Exception as exc:
        return Outcome(deltas, None, exc)
    raise AssertionError("the stream ended without a completion or an error")


@pytest.fixture(scope="module", autouse=True)
async def _warm_sdks(emulator: EmulatorServer) -> None:
    """One plain and one streamed call per SDK before the tests that time them.

    A process's first streamed call imports and builds the SDK's streaming machinery (about a
    second on a loaded machine), which would otherwise count against the first-token limit of
    whichever test happens to run first.
    """
    for provider in PROVIDERS:
        scope = _scope()
        chain, _ = _chain(scope, [_entry(scope, provider, "warm-up", emulator.url)])
        chain.policy = replace(POLICY, first_token_timeout=30.0, attempt_timeout=30.0)
        for stream in (False, True):
            outcome = await _ask(chain, scope, stream=stream, close=False)
            assert outcome.completion is not None, outcome.error
        await chain.aclose()


def _tree(spans: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    finished = spans.get_finished_spans()
    chains = [s for s in finished if s.name == "chat chain"]
    assert len(chains) == 1, [s.name for s in finished]
    chain = chains[0]
    attempts = sorted(
        (s for s in finished if s.parent is not None and s.parent.span_id == chain.context.span_id),
        key=lambda s: dict(s.attributes or {})["bulkhead.attempt"],
    )
    assert len(attempts) == len(finished) - 1, "only attempt spans under the chain span"
    return chain, attempts


def _attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def _assert_no_secret(spans: InMemorySpanExporter) -> None:
    for span in spans.get_finished_spans():
        text = f"{span.attributes} {span.status.description} {[e.attributes for e in span.events]}"
        for key in KEYS.values():
            assert key not in text
        assert "sk-" not in text
        assert "alice@example.com" not in text
        assert "hotel limit" not in text


# fault -> (failed attempts' error.type on the faulty entry, plain / streaming)
FAILOVER_FAULTS: dict[str, tuple[list[str], list[str]]] = {
    "429:0.01": (["rate_limited"] * 2, ["rate_limited"] * 2),
    "429:30": (["rate_limited"], ["rate_limited"]),
    "500": (["server_error"] * 2, ["server_error"] * 2),
    "503": (["server_error"] * 2, ["server_error"] * 2),
    # A timeout is not retried on the same entry while another one remains.
    "hang": (["timeout"], ["first_token_timeout"]),
    "stall": (["timeout"], ["first_token_timeout"]),
    # Sent after 1.3 s: within the plain attempt's 2.5 s, after the stream's 1 s first token.
    "slow:1.3": ([], ["first_token_timeout"]),
    "401": (["auth"] * 2, ["auth"] * 2),
    "disconnect": (["stream_interrupted"] * 2, []),
    "malformed": (["malformed_response"] * 2, []),
    "shape": (["malformed_response"] * 2, []),
    "context": (["context_length"], ["context_length"]),
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("fault", "stream"),
    [
        (fault, stream)
        for fault in FAILOVER_FAULTS
        for stream in (False, True)
        # These break after content has gone out when streaming: see the no-failover test.
        if not (stream and fault in {"disconnect", "malformed", "shape"})
    ],
)
async def test_fault_before_content_fails_over_to_the_next_entry(
    emulator: EmulatorServer, spans: InMemorySpanExporter, fault: str, provider: str, stream: bool
) -> None:
    expected = FAILOVER_FAULTS[fault][1 if stream else 0]
    scope = _scope()
    faulty = f"m-{uuid.uuid4().hex[:8]}@{fault}"
    healthy = f"h-{uuid.uuid4().hex[:8]}"
    fallback = OTHER[provider]
    chain, ring = _chain(
        scope,
        [
            _entry(scope, provider, faulty, emulator.url),
            _entry(scope, fallback, healthy, emulator.url),
        ],
    )
    outcome = await _ask(chain, scope, stream=stream)

    assert outcome.error is None, outcome.error
    assert outcome.completion is not None
    answered_by = provider if not expected else fallback
    assert outcome.completion.provider == answered_by
    assert "180 euros" in outcome.completion.text
    if stream:
        assert "".join(outcome.deltas) == outcome.completion.text
    chain_span, attempts = _tree(spans)
    assert [_attrs(a).get("error.type") for a in attempts] == [*expected, None]
    for number, attempt in enumerate(attempts, start=1):
        attributes = _attrs(attempt)
        assert attempt.name == f"chat {attributes['gen_ai.request.model']}"
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.stream"] is stream
        assert attributes["bulkhead.attempt"] == number
        assert attributes["bulkhead.tenant.id"] == scope.tenant_id
        assert attributes["enduser.id"] == scope.enduser_id
        assert attributes["bulkhead.credential.id"] == "cred-1"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == emulator.port
    done = _attrs(attempts[-1])
    assert done["gen_ai.provider.name"] == answered_by
    assert done["gen_ai.usage.output_tokens"] == outcome.completion.output_tokens > 0
    assert done["gen_ai.usage.input_tokens"] == outcome.completion.input_tokens > 0
    assert done["gen_ai.response.id"] == outcome.completion.response_id != ""
    assert done["gen_ai.response.model"] == outcome.completion.model
    assert done["gen_ai.response.finish_reasons"] == (outcome.completion.finish_reason,)
    if expected:
        assert done["bulkhead.failover.reason"] == expected[-1]
    assert _attrs(chain_span)["bulkhead.tenant.id"] == scope.tenant_id
    _assert_no_secret(spans)
    if fault == "401":
        assert ring.invalidated == [provider], "the refused key is invalidated once, then failover"


async def test_refused_connection_fails_over_at_once(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    for provider in PROVIDERS:
        for stream in (False, True):
            spans.clear()
            scope = _scope()
            chain, _ = _chain(
                scope,
                [
                    _entry(scope, provider, "dead", refused_url()),
                    _entry(scope, OTHER[provider], "alive", emulator.url),
                ],
            )
            outcome = await _ask(chain, scope, stream=stream)
            assert outcome.completion is not None
            assert outcome.completion.provider == OTHER[provider]
            _, attempts = _tree(spans)
            assert [_attrs(a).get("error.type") for a in attempts] == ["connection_refused", None]
            assert _attrs(attempts[1])["bulkhead.failover.reason"] == "connection_refused"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fault", ["disconnect", "malformed"])
async def test_break_after_content_is_an_error_not_a_failover(
    emulator: EmulatorServer, spans: InMemorySpanExporter, fault: str, provider: str
) -> None:
    scope = _scope()
    healthy = f"h-{uuid.uuid4().hex[:8]}"
    chain, _ = _chain(
        scope,
        [
            _entry(scope, provider, f"m@{fault}", emulator.url),
            _entry(scope, OTHER[provider], healthy, emulator.url),
            ChainEntry(provider="local"),
        ],
    )
    outcome = await _ask(chain, scope, stream=True)
    assert outcome.deltas == ["Hotel", " stays"], "the caller saw content before the break"
    assert isinstance(outcome.error, StreamInterrupted)
    assert outcome.completion is None
    chain_span, attempts = _tree(spans)
    expected = "stream_interrupted" if fault == "disconnect" else "malformed_response"
    assert [_attrs(a).get("error.type") for a in attempts] == [expected]
    assert _attrs(chain_span)["error.type"] == expected


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_other_400_stops_the_chain(
    emulator: EmulatorServer, spans: InMemorySpanExporter, provider: str, stream: bool
) -> None:
    scope = _scope()
    chain, _ = _chain(
        scope,
        [_entry(scope, provider, "m@400", emulator.url), ChainEntry(provider="local")],
    )
    outcome = await _ask(chain, scope, stream=stream)
    assert isinstance(outcome.error, ProviderRejected)
    assert outcome.error.status == 502
    _, attempts = _tree(spans)
    assert [_attrs(a).get("error.type") for a in attempts] == ["bad_request"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rotated_key_is_refetched_once_and_used(
    emulator: EmulatorServer, spans: InMemorySpanExporter, provider: str, stream: bool
) -> None:
    scope = _scope()
    ring = KeyRing({provider: ["sk-revoked-OLDKEY123456", KEYS[provider]]})
    chain, _ = _chain(scope, [_entry(scope, provider, "m", emulator.url)], keys=ring)
    outcome = await _ask(chain, scope, stream=stream)
    assert outcome.completion is not None
    assert outcome.completion.provider == provider
    assert ring.invalidated == [provider]
    _, attempts = _tree(spans)
    assert [_attrs(a).get("error.type") for a in attempts] == ["auth", None]
    assert "OLDKEY" not in str(
        [(s.attributes, s.status.description) for s in spans.get_finished_spans()]
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_all_entries_failing_is_providers_unavailable_with_retry_after(
    emulator: EmulatorServer, spans: InMemorySpanExporter, stream: bool
) -> None:
    scope = _scope()
    chain, _ = _chain(
        scope,
        [
            _entry(scope, "openai", "m@503", emulator.url),
            _entry(scope, "anthropic", "m@429:30", emulator.url),
        ],
    )
    outcome = await _ask(chain, scope, stream=stream)
    assert isinstance(outcome.error, ProvidersUnavailable)
    assert outcome.error.status == 503
    assert int(outcome.error.headers["Retry-After"]) >= 30, "the provider's own Retry-After"
    chain_span, attempts = _tree(spans)
    assert _attrs(chain_span)["error.type"] == "providers_unavailable"
    assert [_attrs(a).get("error.type") for a in attempts] == ["server_error"] * 2 + [
        "rate_limited"
    ]


async def test_slow_first_token_within_the_limit_is_not_a_failure(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    for provider in PROVIDERS:
        spans.clear()
        scope = _scope()
        chain, _ = _chain(scope, [_entry(scope, provider, "m@slow:0.05", emulator.url)])
        outcome = await _ask(chain, scope, stream=True)
        assert outcome.completion is not None
        assert outcome.completion.provider == provider


async def test_open_breaker_sends_no_calls_and_is_per_tenant(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    breakers = BreakerRegistry(POLICY.breaker)
    victim, bystander = _scope(), _scope()
    dead_model = f"dead-{uuid.uuid4().hex[:8]}@503"
    path = "/v1/chat/completions"

    def chain_for(scope: TenantScope, model: str) -> ProviderChain:
        return _chain(
            scope,
            [_entry(scope, "openai", model, emulator.url), ChainEntry(provider="local")],
            breakers=breakers,
        )[0]

    victim_chain = chain_for(victim, dead_model)
    for _ in range(2):  # 2 requests x 2 attempts >= 3 consecutive failures: open
        outcome = await _ask(victim_chain, victim, stream=False, close=False)
        assert outcome.completion is not None
        assert outcome.completion.provider == "local"
    assert victim_chain.breaker_for(victim, 0) is not None
    assert victim_chain.breaker_for(victim, 0).state == "open"  # type: ignore[union-attr]
    before = emulator.calls[path]
    spans.clear()
    for stream in (False, True) * 2:
        outcome = await _ask(victim_chain, victim, stream=stream, close=False)
        assert outcome.completion is not None
        assert outcome.completion.provider == "local"
    assert emulator.calls[path] == before, "an open circuit sends the dead provider nothing"
    for span in spans.get_finished_spans():
        if span.name == "chat chain":
            assert [e.name for e in span.events] == ["circuit_open"]
        else:
            assert _attrs(span)["bulkhead.failover.reason"] == "circuit_open"
    await victim_chain.aclose()

    # Another tenant on the same provider and model is not cut off.
    healthy = chain_for(bystander, dead_model.split("@")[0])
    outcome = await _ask(healthy, bystander, stream=False)
    assert outcome.completion is not None
    assert outcome.completion.provider == "openai"
    assert emulator.calls[path] == before + 1


def _points(name: str) -> list[Any]:
    data = METRICS.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope_metrics in resource.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


async def test_metrics_count_tokens_durations_and_failovers(emulator: EmulatorServer) -> None:
    scope = _scope()
    model = f"metered-{uuid.uuid4().hex[:8]}"
    chain, _ = _chain(
        scope,
        [
            _entry(scope, "anthropic", f"{model}@503", emulator.url),
            _entry(scope, "openai", model, emulator.url),
        ],
    )
    outcome = await _ask(chain, scope, stream=False)
    assert outcome.completion is not None
    tokens = {
        dict(p.attributes)["gen_ai.token.type"]: p.sum
        for p in _points("gen_ai.client.token.usage")
        if dict(p.attributes).get("gen_ai.request.model") == model
    }
    assert tokens == {
        "input": outcome.completion.input_tokens,
        "output": outcome.completion.output_tokens,
    }
    durations = [
        dict(p.attributes).get("error.type")
        for p in _points("gen_ai.client.operation.duration")
        if str(dict(p.attributes).get("gen_ai.request.model", "")).startswith(model)
    ]
    assert sorted(map(str, durations)) == ["None", "server_error"]
    failovers = [
        p.value
        for p in _points("bulkhead.llm.failovers")
        if dict(p.attributes).get("gen_ai.request.model") == f"{model}@503"
    ]
    assert failovers == [1]


async def test_prompt_and_answer_reach_spans_only_when_the_tenant_opts_in(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    scope = _scope()
    chain, _ = _chain(scope, [_entry(scope, "openai", "m", emulator.url)])
    chain.capture_content = True
    outcome = await _ask(chain, scope, stream=True)
    assert outcome.completion is not None
    attempt = _attrs(_tree(spans)[1][0])
    assert "How much is the hotel limit?" in str(attempt["gen_ai.input.messages"])
    assert outcome.completion.text in str(attempt["gen_ai.output.messages"])


async def test_unresolvable_key_fails_over_to_the_next_entry(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    scope = _scope()
    ring = KeyRing({"anthropic": [KEYS["anthropic"]]})  # no openai key stored

    async def missing(ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        if ref.name == "openai":
            raise SecretNotFound(f"no secret stored under '{ref}'")
        return SecretValue(KEYS["anthropic"])

    ring.get = missing  # type: ignore[method-assign]
    chain, _ = _chain(
        scope,
        [_entry(scope, "openai", "m", emulator.url), _entry(scope, "anthropic", "h", emulator.url)],
        keys=ring,
    )
    outcome = await _ask(chain, scope, stream=False)
    assert outcome.completion is not None
    assert outcome.completion.provider == "anthropic"
    _, attempts = _tree(spans)
    assert [_attrs(a).get("error.type") for a in attempts] == ["secret_unavailable", None]


# Hedging: a plain answer not in 0.2 s starts the next entry; attempts may take 3 s.
HEDGING = replace(POLICY, hedge_after=0.2, attempt_timeout=3.0)


def _hedging_chain(
    scope: TenantScope, entries: Sequence[ChainEntry], breakers: BreakerRegistry | None = None
) -> ProviderChain:
    chain, _ = _chain(scope, entries, breakers=breakers)
    chain.policy = HEDGING
    return chain


def _ledger(ledger: list[AttemptRecord]) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome) for a in ledger]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fault", ["hang", "stall"])
async def test_late_plain_answer_starts_the_next_entry_and_the_first_answer_wins(
    emulator: EmulatorServer, spans: InMemorySpanExporter, provider: str, fault: str
) -> None:
    scope = _scope()
    other = OTHER[provider]
    chain = _hedging_chain(
        scope,
        [
            _entry(scope, provider, f"m-{uuid.uuid4().hex[:8]}@{fault}", emulator.url),
            _entry(scope, other, "healthy", emulator.url),
        ],
    )
    ledger: list[AttemptRecord] = []
    outcome = await _ask(chain, scope, stream=False, ledger=ledger)
    assert outcome.completion is not None, outcome.error
    assert outcome.completion.provider == other
    # The late attempt was cut when the other entry answered, long before its own 3 s.
    assert _ledger(ledger) == [(other, "ok"), (provider, "timeout")]
    assert ledger[1].latency_ms < HEDGING.attempt_timeout * 1000
    chain_span, attempts = _tree(spans)
    assert [e.name for e in chain_span.events] == ["hedge"]
    assert [_attrs(a).get("error.type") for a in attempts] == ["timeout", None]
    assert _attrs(attempts[1])["bulkhead.failover.reason"] == "hedge"


async def test_a_late_answer_that_comes_first_still_wins_and_the_hedge_is_not_blamed(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    scope = _scope()
    breakers = BreakerRegistry(POLICY.breaker)
    chain = _hedging_chain(
        scope,
        [
            _entry(scope, "openai", "m@slow:0.6", emulator.url),
            _entry(scope, "anthropic", "h@slow:2.5", emulator.url),
        ],
        breakers=breakers,
    )
    # As many requests as the breaker's threshold: cancelled hedges must not open it.
    for _ in range(POLICY.breaker.consecutive_failures):
        ledger: list[AttemptRecord] = []
        outcome = await _ask(chain, scope, stream=False, close=False, ledger=ledger)
        assert outcome.completion is not None, outcome.error
        assert outcome.completion.provider == "openai"
        assert _ledger(ledger) == [("anthropic", "cancelled"), ("openai", "ok")]
    for index in (0, 1):
        assert chain.breaker_for(scope, index).state == "closed"  # type: ignore[union-attr]
    await chain.aclose()


async def test_a_late_attempt_still_answers_when_the_rest_of_the_chain_fails(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    scope = _scope()
    chain = _hedging_chain(
        scope,
        [
            _entry(scope, "anthropic", "m@slow:0.6", emulator.url),
            _entry(scope, "openai", "m@503", emulator.url),
        ],
    )
    ledger: list[AttemptRecord] = []
    outcome = await _ask(chain, scope, stream=False, ledger=ledger)
    assert outcome.completion is not None, outcome.error
    assert outcome.completion.provider == "anthropic"
    assert _ledger(ledger) == [("openai", "server_error")] * 2 + [("anthropic", "ok")]


async def test_a_hung_provider_is_cut_off_by_its_breaker(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    """Plain calls beaten by a hedge count towards the failure rate: enough of them open it."""
    scope = _scope()
    breakers = BreakerRegistry(POLICY.breaker)
    hung = f"hung-{uuid.uuid4().hex[:8]}@hang"
    chain = _hedging_chain(
        scope,
        [
            _entry(scope, "openai", hung, emulator.url),
            _entry(scope, "anthropic", "healthy", emulator.url),
        ],
        breakers=breakers,
    )

    def calls() -> int:
        return sum(hung.encode() in body for _, body in list(emulator.app.bodies))

    opening = max(POLICY.breaker.consecutive_failures, POLICY.breaker.min_calls)
    for number in range(1, opening + 1):
        ledger: list[AttemptRecord] = []
        outcome = await _ask(chain, scope, stream=False, close=False, ledger=ledger)
        assert outcome.completion is not None, outcome.error
        assert _ledger(ledger) == [("anthropic", "ok"), ("openai", "timeout")]
        state = chain.breaker_for(scope, 0).state  # type: ignore[union-attr]
        assert state == ("open" if number >= POLICY.breaker.min_calls else "closed"), number
    assert calls() == opening
    for stream in (False, True):
        ledger = []
        outcome = await _ask(chain, scope, stream=stream, close=False, ledger=ledger)
        assert outcome.completion is not None
        assert _ledger(ledger) == [("openai", "circuit_open"), ("anthropic", "ok")]
    assert calls() == opening, "the open circuit sends the hung provider nothing"
    await chain.aclose()


async def test_a_first_token_timeout_counts_in_a_row(
    emulator: EmulatorServer, spans: InMemorySpanExporter
) -> None:
    """Streaming's timeout is no ambiguous signal: the usual consecutive count opens it."""
    scope = _scope()
    chain = _hedging_chain(
        scope,
        [
            _entry(scope, "openai", f"hung-{uuid.uuid4().hex[:8]}@hang", emulator.url),
            _entry(scope, "anthropic", "healthy", emulator.url),
        ],
    )
    for _ in range(POLICY.breaker.consecutive_failures):
        outcome = await _ask(chain, scope, stream=True, close=False)
        assert outcome.completion is not None, outcome.error
    assert chain.breaker_for(scope, 0).state == "open"  # type: ignore[union-attr]
    await chain.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_every_entry_gets_a_turn_before_the_deadline(
    emulator: EmulatorServer, spans: InMemorySpanExporter, stream: bool
) -> None:
    """First token and hedge limits far out of reach: the entry's share of the deadline rules."""
    scope = _scope()
    chain, _ = _chain(
        scope,
        [
            _entry(scope, "openai", f"m-{uuid.uuid4().hex[:8]}@hang", emulator.url),
            _entry(scope, "anthropic", "healthy", emulator.url),
        ],
    )
    chain.policy = replace(
        POLICY,
        first_token_timeout=30.0,
        hedge_after=30.0,
        attempt_timeout=30.0,
        request_deadline=4.0,
    )
    ledger: list[AttemptRecord] = []
    outcome = await _ask(chain, scope, stream=stream, ledger=ledger)
    assert outcome.completion is not None, outcome.error
    assert outcome.completion.provider == "anthropic"
    cut = "timeout" if not stream else "first_token_timeout"
    assert sorted(_ledger(ledger)) == [("anthropic", "ok"), ("openai", cut)]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_timeout_is_retried_on_the_last_entry(
    emulator: EmulatorServer, spans: InMemorySpanExporter, stream: bool
) -> None:
    scope = _scope()
    chain, _ = _chain(scope, [_entry(scope, "openai", "m@hang", emulator.url)])
    # A hang never answers, however loaded the machine: short limits are safe here.
    chain.policy = replace(POLICY, first_token_timeout=0.5, attempt_timeout=0.5)
    ledger: list[AttemptRecord] = []
    outcome = await _ask(chain, scope, stream=stream, ledger=ledger)
    assert isinstance(outcome.error, ProvidersUnavailable)
    cut = "timeout" if not stream else "first_token_timeout"
    assert _ledger(ledger) == [("openai", cut)] * (1 + POLICY.max_retries)
