"""`POST /v1/chat/completions` driven by the official `openai` SDK (in-process ASGI transport).

The SDK talks to the app through `httpx2.ASGITransport`, so the real request/response bytes
(auth header, JSON bodies, SSE framing, error bodies) go through the whole app; the tenant's
chain calls the provider emulator on loopback with the real SDKs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.tenancy.scope import Role
from tests.conftest import AuthHeaders
from tests.integration.conftest import LlmTenant
from tests.provider_emulator import ANSWER, EmulatorServer

Client = AsyncTestClient[Litestar]
QUESTION = "How much is the hotel limit per night?"


@pytest.fixture
def sdk_for(client: Client) -> Callable[[str], openai.AsyncOpenAI]:
    """`sdk_for(api_key)`: an `openai.AsyncOpenAI` whose requests are served by the app.

    The SDK's `http_client` is Litestar's test client (an httpx client whose transport runs
    the app in the loop its lifespan opened its pools in).
    """

    def make(api_key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=f"{client.base_url}/v1", http_client=client, max_retries=0
        )

    return make


def _token(auth: AuthHeaders, tenant: str, user: str = "alice") -> str:
    return auth(tenant, user=user)["Authorization"].removeprefix("Bearer ")


async def _openai_tenant(llm_tenant: LlmTenant, emulator: EmulatorServer, model: str) -> str:
    return await llm_tenant([("openai", model, emulator.url + "/v1"), ("local", "", None)])


async def test_sdk_gets_a_cited_answer_with_the_users_jwt(
    llm_tenant: LlmTenant, emulator: EmulatorServer, sdk_for: Any, auth: AuthHeaders
) -> None:
    tenant = await _openai_tenant(llm_tenant, emulator, "gpt-4o-mini")
    sdk = sdk_for(_token(auth, tenant))
    completion = await sdk.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    extra = completion.model_extra or {}
    assert [(c["marker"], c["document_id"]) for c in extra["citations"]] == [(1, "travel")]
    assert "180 euros" in extra["citations"][0]["snippet"]
    assert extra["bulkhead"]["provider"] == "openai"


async def test_sdk_streams_chunks_citations_usage_then_done(
    llm_tenant: LlmTenant, emulator: EmulatorServer, sdk_for: Any, auth: AuthHeaders
) -> None:
    tenant = await _openai_tenant(llm_tenant, emulator, "gpt-4o-mini")
    sdk = sdk_for(_token(auth, tenant))
    stream = await sdk.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1
    assert finished[0].choices[0].finish_reason == "stop"
    assert finished[0].model == "gpt-4o-mini"
    citations = (finished[0].model_extra or {})["citations"]
    assert [(c["marker"], c["document_id"]) for c in citations] == [(1, "travel")]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_raw_stream_ends_with_done(
    llm_tenant: LlmTenant, emulator: EmulatorServer, client: Client, auth: AuthHeaders
) -> None:
    tenant = await _openai_tenant(llm_tenant, emulator, "gpt-4o-mini")
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": QUESTION}], "stream": True},
        headers=auth(tenant),
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in response.text.replace("\r\n", "\n").split("\n\n") if f.strip()]
    assert frames[-1] == "data: [DONE]"
    assert not any("error" in json.loads(f.removeprefix("data: ")) for f in frames[:-1])


async def test_provider_cut_mid_stream_raises_in_the_sdk(
    llm_tenant: LlmTenant, emulator: EmulatorServer, sdk_for: Any, auth: AuthHeaders
) -> None:
    tenant = await llm_tenant([("openai", "gpt-4o-mini@disconnect", emulator.url + "/v1")])
    sdk = sdk_for(_token(auth, tenant))
    stream = await sdk.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert "".join(received)  # content had gone out before the cut
    assert caught.value.code == "provider_stream_interrupted"
    assert "sk-proj" not in str(caught.value.body)


async def test_history_and_instructions_reach_the_provider_in_order(
    llm_tenant: LlmTenant, emulator: EmulatorServer, sdk_for: Any, auth: AuthHeaders
) -> None:
    tenant = await _openai_tenant(llm_tenant, emulator, "gpt-4o-mini")
    sdk = sdk_for(_token(auth, tenant))
    await sdk.chat.completions.create(
        model="auto",
        messages=[
            {"role": "system", "content": "Answer in French. marker-7f3a"},
            {"role": "user", "content": "Earlier question marker-7f3a?"},
            {"role": "assistant", "content": "Earlier answer marker-7f3a."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        ],
    )
    sent = [
        json.loads(body)
        for path, body in emulator.app.bodies
        if path.endswith("/chat/completions") and b"marker-7f3a" in body
    ][-1]
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    system, earlier_q, earlier_a, asked = (m["content"] for m in sent["messages"])
    assert "untrusted" in system
    assert system.endswith("Instructions from the application:\nAnswer in French. marker-7f3a")
    assert (earlier_q, earlier_a) == (
        "Earlier question marker-7f3a?",
        "Earlier answer marker-7f3a.",
    )
    assert asked.startswith("<documents>")
    assert '<passage marker="1" title="Travel">' in asked
    assert asked.endswith(f"Question: {QUESTION}")


async def test_unknown_model_is_a_404_model_not_found(
    llm_tenant: LlmTenant, emulator: EmulatorServer, sdk_for: Any, auth: AuthHeaders
) -> None:
    tenant = await _openai_tenant(llm_tenant, emulator, "gpt-4o-mini")
    sdk = sdk_for(_token(auth, tenant))
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(
            model="gpt-5-unlisted", messages=[{"role": "user", "content": QUESTION}]
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.response.headers["content-type"] == "application/problem+json"
    problem = caught.value.response.json()
    assert problem["code"] == "model_not_found"
    assert "openai/gpt-4o-mini" in problem["detail"]
    models = await sdk.models.list()
    assert [m.id for m in models.data] == ["auto", "openai/gpt-4o-mini", "local/extractive"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"temperature": 0.2}, "unsupported_parameter", "temperature"),
        ({"tools": []}, "unsupported_parameter", "tools"),
        ({"user": "someone-else"}, "unsupported_parameter", "user"),
        ({"n": 2}, "validation_error", "n"),
        ({"frobnicate": True}, "validation_error", "frobnicate"),
        ({"messages": []}, "validation_error", "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "validation_error", "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "validation_error",
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "validation_error", "messages"),
        ({"messages": [{"role": "user", "content": "  "}]}, "validation_error", "messages"),
        (
            {"messages": [{"role": "user", "content": "x", "name": "n"}]},
            "validation_error",
            "messages[0].name",
        ),
        ({"api_base": "http://evil.example"}, "validation_error", "api_base"),
    ],
)
async def test_invalid_or_unsupported_bodies_are_refused_by_name(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    body: dict[str, Any],
    code: str,
    param: str | None,
) -> None:
    tenant, _ = tenant_pair
    request = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}], **body}
    response = await client.post("/v1/chat/completions", json=request, headers=auth(tenant))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert problem["error"]["code"] == code
    assert problem["error"]["type"] == "invalid_request_error"
    assert problem["error"]["param"] == param


async def test_sdk_errors_carry_openai_shape_for_auth_and_role_refusals(
    client: Client, tenant_pair: tuple[str, str], sdk_for: Any, auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        await sdk_for("not-a-token").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": QUESTION}]
        )
    assert unauthenticated.value.code == "unauthenticated"
    search_only = auth(tenant, roles=(Role.SEARCH,))["Authorization"].removeprefix("Bearer ")
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        await sdk_for(search_only).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": QUESTION}]
        )
    assert forbidden.value.code == "forbidden"
    assert forbidden.value.type == "permission_error"


async def test_api_key_works_as_the_sdk_api_key(
    client: Client,
    llm_tenant: LlmTenant,
    emulator: EmulatorServer,
    sdk_for: Any,
    auth: AuthHeaders,
) -> None:
    tenant = await _openai_tenant(llm_tenant, emulator, "gpt-4o-mini")
    created = await client.post(
        "/v1/admin/api-keys",
        json={"name": "frontend", "scopes": ["chat"]},
        headers=auth(tenant, roles=(Role.ADMIN,)),
    )
    assert created.status_code == 201, created.text
    sdk = sdk_for(created.json()["key"])
    completion = await sdk.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": QUESTION}]
    )
    assert completion.choices[0].message.content == ANSWER


async def test_a_body_naming_another_tenant_is_refused(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, other = tenant_pair
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}], "tenant_id": other},
        headers=auth(tenant),
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_mismatch"
