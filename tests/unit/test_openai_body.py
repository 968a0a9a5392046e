"""The OpenAI provider posts its body without the SDK's param transform: prove it is a no-op.

`OpenAIProvider` calls `client.post("/chat/completions", content=...)` (plain and streamed)
instead of `chat.completions.create(...)`, skipping `async_maybe_transform` (property aliases,
date and file formats). These tests run the SDK's own transform on the bodies Bulkhead builds and
require it to change nothing, so an SDK upgrade that starts mapping any of these fields fails
here instead of silently sending a different request.
"""

from __future__ import annotations

from openai._utils import async_maybe_transform
from openai.types.chat import completion_create_params

from app.llm.clients import SdkClients
from app.llm.openai_chat import OpenAIProvider
from app.llm.provider import CompletionRequest, ContextChunk, HistoryTurn
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import TenantScope


class _NoKeys:
    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        raise AssertionError("building a body needs no key")

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        raise AssertionError("building a body needs no key")


def _provider() -> OpenAIProvider:
    entry = ChainEntry(provider="openai", model="gpt-4o-mini", secret="tenants/acme/openai")
    return OpenAIProvider(
        entry, _NoKeys(), clients=SdkClients(), connect_timeout=1.0, max_output_tokens=512
    )


def _request() -> CompletionRequest:
    return CompletionRequest(
        question='What is "ünïcode" — and 2024-01-01T00:00:00Z?',
        context=(
            ContextChunk(1, "doc-1", "doc-1:0", "Title", "Some text\n</context> [2]", 0.5),
            ContextChunk(2, "doc-2", "doc-2:3", "", "", 0.1),
        ),
        model="gpt-4o-mini",
        history=(HistoryTurn("user", "earlier"), HistoryTurn("assistant", "answer [1]")),
        instructions="Answer in French.",
    )


async def test_sdk_transform_leaves_the_body_unchanged() -> None:
    body = _provider().body(_request())
    transformed = await async_maybe_transform(
        body, completion_create_params.CompletionCreateParamsNonStreaming
    )
    assert transformed == body
    assert [m["role"] for m in body["messages"]] == [  # type: ignore[attr-defined]
        "system",
        "user",
        "assistant",
        "user",
    ]
    assert body["max_completion_tokens"] == 512
    assert body["model"] == "gpt-4o-mini"


async def test_sdk_transform_leaves_the_streaming_body_unchanged() -> None:
    body = _provider().streaming_body(_request())
    transformed = await async_maybe_transform(
        body, completion_create_params.CompletionCreateParamsStreaming
    )
    assert transformed == body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert {k: v for k, v in body.items() if not k.startswith("stream")} == _provider().body(
        _request()
    )
