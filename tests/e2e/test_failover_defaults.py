"""A hung primary provider at the shipped timing defaults, over real HTTP.

The served app runs `LlmSettings()` as shipped (not the short timings the shared test settings
use). The tenant's chain is `openai` on the emulator, faulted to hang (connection accepted,
no status, no headers) or to stall (status and headers, then no body), then `anthropic`,
healthy. Requests on every chat surface, plain and streamed, run at once: each must be
answered by `anthropic` within 15 s (at the defaults: about 10 s, the first-token limit or the
hedge delay). They open the dead entry's breaker, so later requests send the hung provider
nothing (counted from the request bodies the emulator received).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import LlmSettings, Settings
from app.tenancy.manifest import ChainEntry
from tests.conftest import AuthHeaders, TenantFactory
from tests.e2e.stack import served_in_thread, served_tenant
from tests.provider_emulator import EmulatorServer

pytestmark = pytest.mark.e2e
ANSWER_WITHIN = 15.0
QUESTION = "How much is the hotel limit per night?"
DOC = "## Hotels\nHotel stays are reimbursed up to 180 euros per night in every city.\n"
KEYS = {"openai": "sk-proj-DEFAULTSopenai123456", "anthropic": "sk-ant-DEFAULTSanthropic1234"}


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_root: Path) -> Iterator[str]:
    """Bulkhead with the shipped LLM timing defaults, on uvicorn in a background thread."""
    own = settings.model_copy(deep=True)
    own.llm = LlmSettings()
    own.vectors.path = tmp_root / f"qdrant-defaults-{uuid.uuid4().hex[:8]}"
    with served_in_thread(own, "bulkhead-defaults") as url:
        yield url


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served, timeout=ANSWER_WITHIN + 5) as client:
        yield client


async def _tenant(
    hung_model: str,
    *,
    emulator: EmulatorServer,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
    kek: bytes,
    http: httpx.AsyncClient,
    auth: AuthHeaders,
) -> str:
    tenant = f"hang-{uuid.uuid4().hex[:10]}"
    chain = (
        ChainEntry(
            provider="openai",
            model=hung_model,
            secret=f"tenants/{tenant}/openai",
            base_url=emulator.url + "/v1",
        ),
        ChainEntry(
            provider="anthropic",
            model="claude-haiku-4-5",
            secret=f"tenants/{tenant}/anthropic",
            base_url=emulator.url,
        ),
    )
    return await served_tenant(
        http, tenant, chain, KEYS, make_tenant=make_tenant, app_pool=app_pool, kek=kek, auth=auth
    )


async def _answered_by(
    http: httpx.AsyncClient, headers: dict[str, str], surface: str, stream: bool
) -> tuple[str, float]:
    """Ask once on `surface`; returns the provider that answered and the seconds it took."""
    started = time.perf_counter()
    if surface == "chat":
        body: dict[str, object] = {"message": QUESTION, "stream": stream}
        path = "/v1/chat"
    else:
        body = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}]}
        body["stream"] = stream
        path = "/v1/chat/completions"
    async with asyncio.timeout(ANSWER_WITHIN):
        response = await http.post(path, json=body, headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    if not stream:
        payload = response.json()
        provider = payload["provider"] if surface == "chat" else payload["bulkhead"]["provider"]
        return provider, elapsed
    frames = [line.removeprefix("data:").strip() for line in response.text.splitlines()]
    events = [json.loads(f) for f in frames if f.startswith("{")]
    if surface == "chat":
        return next(e["provider"] for e in events if "provider" in e), elapsed
    return next(e["bulkhead"]["provider"] for e in events if "bulkhead" in e), elapsed


def _calls(emulator: EmulatorServer, model: str) -> int:
    return sum(model.encode() in body for _, body in list(emulator.app.bodies))


SURFACES = [("chat", False), ("chat", True), ("completions", False), ("completions", True)]


async def test_hung_primary_fails_over_within_15_s_and_is_then_cut_off(
    emulator: EmulatorServer,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
    kek: bytes,
    http: httpx.AsyncClient,
    auth: AuthHeaders,
) -> None:
    defaults = LlmSettings()
    # Enough failures to open the breaker whichever way they count: streamed first-token
    # timeouts in a row, plain calls beaten by the hedge towards the failure rate.
    threshold = max(defaults.breaker_consecutive_failures, defaults.breaker_min_calls)
    hung = {fault: f"gpt-4o-mini-{uuid.uuid4().hex[:8]}@{fault}" for fault in ("hang", "stall")}
    tenants = {
        fault: await _tenant(
            model,
            emulator=emulator,
            make_tenant=make_tenant,
            app_pool=app_pool,
            kek=kek,
            http=http,
            auth=auth,
        )
        for fault, model in hung.items()
    }
    # Every surface, plain and streamed, at once; as many requests as open the breaker.
    asks = [(fault, *SURFACES[i % len(SURFACES)]) for fault in tenants for i in range(threshold)]
    results = await asyncio.gather(
        *(
            _answered_by(http, auth(tenants[fault]), surface, stream)
            for fault, surface, stream in asks
        )
    )
    for (fault, surface, stream), (provider, elapsed) in zip(asks, results, strict=True):
        assert provider == "anthropic", (fault, surface, stream)
        assert elapsed < ANSWER_WITHIN, (fault, surface, stream, elapsed)
    for fault, model in hung.items():
        assert _calls(emulator, model) == threshold, fault

    # The circuit is open: later requests go straight to anthropic, the hung provider sees none.
    for fault, model in hung.items():
        for surface, stream in SURFACES:
            provider, _ = await _answered_by(http, auth(tenants[fault]), surface, stream)
            assert provider == "anthropic"
        assert _calls(emulator, model) == threshold, f"{fault}: the open circuit sends nothing"
