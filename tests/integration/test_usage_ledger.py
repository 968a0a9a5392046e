"""The usage ledger behind `/v1/admin/usage` shows every provider attempt, failovers included.

A request that fails over shows the failed attempts under the provider and model that failed
and the answer under the one that answered; a request that fails everywhere shows every
entry's failures, none of it under provider `none`. `requests` counts each request once.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.tenancy.scope import Role
from tests.conftest import AuthHeaders
from tests.integration.conftest import LlmTenant
from tests.provider_emulator import EmulatorServer

Client = AsyncTestClient[Litestar]
QUESTION = {"message": "How much is the hotel limit per night?"}


async def _report(client: Client, auth: AuthHeaders, tenant: str) -> dict[str, dict[str, Any]]:
    admin = auth(tenant, user="root", roles=(Role.ADMIN,))
    response = await client.get("/v1/admin/usage", headers=admin)
    assert response.status_code == 200, response.text
    rows = response.json()["usage"]
    assert len({(r["day"], r["user_id"]) for r in rows}) == 1
    return {f"{r['provider']}/{r['model']}": r for r in rows}


async def test_failed_attempts_before_a_failover_are_attributed_to_their_provider(
    client: Client, llm_tenant: LlmTenant, auth: AuthHeaders, emulator: EmulatorServer
) -> None:
    tenant = await llm_tenant(
        [
            ("openai", "gpt-4o-mini@503", emulator.url + "/v1"),
            ("anthropic", "claude-haiku-4-5", emulator.url),
        ]
    )
    plain = await client.post("/v1/chat", json=QUESTION, headers=auth(tenant))
    assert plain.json()["provider"] == "anthropic"
    # 3 attempts (2 retries) failed; the second request's 2 more open the breaker (5 in a row).
    streamed = await client.post("/v1/chat", json=QUESTION | {"stream": True}, headers=auth(tenant))
    assert '"provider":"anthropic"' in streamed.text

    report = await _report(client, auth, tenant)
    assert set(report) == {"openai/gpt-4o-mini@503", "anthropic/claude-haiku-4-5"}
    failed, answered = report["openai/gpt-4o-mini@503"], report["anthropic/claude-haiku-4-5"]
    assert (failed["attempts"], failed["failed_attempts"]) == (5, 5)
    assert failed["outcomes"] == {"server_error": 5}
    assert (failed["requests"], failed["failed"]) == (0, 0), "neither request ended at openai"
    assert (failed["input_tokens"], failed["output_tokens"], failed["cost_usd"]) == (0, 0, 0)
    assert failed["avg_latency_ms"] > 0
    assert (answered["requests"], answered["failed"]) == (2, 0)
    assert (answered["attempts"], answered["failed_attempts"]) == (2, 0)
    assert answered["outcomes"] == {"ok": 2}
    assert answered["output_tokens"] > 0
    assert answered["cost_usd"] > 0


async def test_a_request_that_fails_everywhere_shows_each_entrys_failures(
    client: Client, llm_tenant: LlmTenant, auth: AuthHeaders, emulator: EmulatorServer
) -> None:
    tenant = await llm_tenant(
        [
            ("openai", "gpt-4o-mini@500", emulator.url + "/v1"),
            ("anthropic", "claude-haiku-4-5@401", emulator.url),
        ]
    )
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": QUESTION["message"]}]},
        headers=auth(tenant),
    )
    assert response.status_code == 503

    report = await _report(client, auth, tenant)
    assert "none/none" not in report
    openai, anthropic = report["openai/gpt-4o-mini@500"], report["anthropic/claude-haiku-4-5@401"]
    assert (openai["attempts"], openai["failed_attempts"], openai["requests"]) == (3, 3, 0)
    assert openai["outcomes"] == {"server_error": 3}
    # The key is refetched once, then the chain gives up: the request ended here.
    assert (anthropic["attempts"], anthropic["failed_attempts"]) == (2, 2)
    assert (anthropic["requests"], anthropic["failed"]) == (1, 1)
    assert anthropic["outcomes"] == {"auth": 2}


async def test_a_turn_without_attempts_is_refused_and_writes_nothing(
    app_pool: asyncpg.Pool, llm_tenant: LlmTenant
) -> None:
    tenant = await llm_tenant([("local", "", None)])
    bad = [
        ([], [], [], [], 1),  # no attempt
        (["openai"], ["m"], ["ok"], [1.0], 2),  # final out of range
        (["openai", "anthropic"], ["m"], ["ok", "ok"], [1.0, 1.0], 1),  # ragged arrays
    ]
    async with app_pool.acquire() as connection:
        for providers, models, outcomes, latencies, final in bad:
            with pytest.raises(asyncpg.InvalidParameterValueError):
                await connection.execute(
                    "SELECT bulkhead_save_turn($1, 'u', 'c', NULL, NULL, NULL, NULL, NULL, NULL,"
                    " NULL, $2, $3, $4, $5, $6, 0, 0, 't', 0)",
                    tenant,
                    providers,
                    models,
                    outcomes,
                    latencies,
                    final,
                )
        async with connection.transaction():
            await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
            assert await connection.fetchval("SELECT count(*) FROM usage") == 0
