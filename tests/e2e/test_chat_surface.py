"""The chat surface over real HTTP: the app served by uvicorn on a loopback port.

The official `openai` SDK (plain and streaming) gets cited answers from
`/v1/chat/completions`; an SSE client reads `/v1/chat`'s event sequence as it arrives; a
provider that drops the connection mid-stream (emulator fault) yields an `error` event (and,
through the SDK, an `APIError`). The tenant's chain calls the provider emulator on loopback.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from app.config import Settings
from app.tenancy.manifest import ChainEntry
from tests.conftest import AuthHeaders, TenantFactory
from tests.e2e.stack import served_in_thread, served_tenant
from tests.provider_emulator import ANSWER, EmulatorServer

pytestmark = pytest.mark.e2e
QUESTION = "How much is the hotel limit per night?"
DOC = "## Hotels\nHotel stays are reimbursed up to 180 euros per night in every city.\n"


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_root: Path) -> Iterator[str]:
    """Bulkhead on uvicorn in a background thread (its own loop, pool and vector shard)."""
    own = settings.model_copy(deep=True)
    own.vectors.path = tmp_root / f"qdrant-e2e-{uuid.uuid4().hex[:8]}"
    with served_in_thread(own, "bulkhead-e2e") as url:
        yield url


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=10) as client:
        yield client


@pytest.fixture
def tenant_for(
    emulator: EmulatorServer,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
    kek: bytes,
    http: httpx.AsyncClient,
    auth: AuthHeaders,
) -> Any:
    async def make(model: str) -> str:
        tenant = f"e2e-{uuid.uuid4().hex[:10]}"
        entry = ChainEntry(
            provider="openai",
            model=model,
            secret=f"tenants/{tenant}/openai",
            base_url=emulator.url + "/v1",
        )
        return await served_tenant(
            http,
            tenant,
            (entry,),
            {"openai": "sk-proj-E2Eopenai1234567"},
            make_tenant=make_tenant,
            app_pool=app_pool,
            kek=kek,
            auth=auth,
        )

    return make


def _sdk(served: str, auth: AuthHeaders, tenant: str) -> openai.AsyncOpenAI:
    token = auth(tenant)["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(api_key=token, base_url=f"{served}/v1", max_retries=0)


async def test_openai_sdk_gets_cited_answers_plain_and_streamed(
    served: str, tenant_for: Any, auth: AuthHeaders
) -> None:
    tenant = await tenant_for("gpt-4o-mini")
    sdk = _sdk(served, auth, tenant)
    try:
        plain = await sdk.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": QUESTION}]
        )
        assert plain.choices[0].message.content == ANSWER
        citations = (plain.model_extra or {})["citations"]
        assert [(c["marker"], c["document_id"]) for c in citations] == [(1, "travel")]

        stream = await sdk.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
        last = chunks[-1]
        assert last.choices[0].finish_reason == "stop"
        streamed = (last.model_extra or {})["citations"]
        assert [(c["marker"], c["document_id"]) for c in streamed] == [(1, "travel")]
    finally:
        await sdk.close()


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Parse server-sent events as they arrive."""
    name, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()
        elif not line and name:
            yield name, json.loads(data)
            name, data = "", ""


async def test_sse_client_sees_meta_passages_deltas_citations_done(
    http: httpx.AsyncClient, tenant_for: Any, auth: AuthHeaders
) -> None:
    tenant = await tenant_for("gpt-4o-mini")
    async with http.stream(
        "POST", "/v1/chat", json={"message": QUESTION, "stream": True}, headers=auth(tenant)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [event async for event in _sse(response)]
    names = [name for name, _ in events]
    assert names[:2] == ["meta", "passages"]
    assert set(names[2:-2]) == {"delta"}
    assert names[-2:] == ["citations", "done"]
    assert "".join(d["text"] for n, d in events if n == "delta") == ANSWER
    assert events[1][1]["passages"][0]["document_id"] == "travel"
    assert [(c["marker"], c["document_id"]) for c in events[-2][1]["citations"]] == [(1, "travel")]
    assert events[-1][1]["cited"] == [1]
    assert events[-1][1]["provider"] == "openai"


async def test_provider_cut_mid_stream_is_an_error_event(
    served: str, http: httpx.AsyncClient, tenant_for: Any, auth: AuthHeaders
) -> None:
    tenant = await tenant_for("gpt-4o-mini@disconnect")
    async with http.stream(
        "POST", "/v1/chat", json={"message": QUESTION, "stream": True}, headers=auth(tenant)
    ) as response:
        assert response.status_code == 200
        events = [event async for event in _sse(response)]
    names = [name for name, _ in events]
    assert names[:3] == ["meta", "passages", "delta"]
    assert names[-1] == "error"
    assert "done" not in names
    assert events[-1][1]["code"] == "provider_stream_interrupted"

    sdk = _sdk(served, auth, tenant)
    try:
        stream = await sdk.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": QUESTION}], stream=True
        )

        async def consume() -> None:
            async for _ in stream:
                pass

        with pytest.raises(openai.APIError) as caught:
            await consume()
        assert caught.value.code == "provider_stream_interrupted"
    finally:
        await sdk.close()
