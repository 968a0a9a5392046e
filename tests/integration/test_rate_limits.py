"""Rate limits and token quotas across two replicas sharing one counter store.

Each store (Postgres by default, a real `redis-server` on loopback with
`BULKHEAD_REDIS_URL`) serves two app instances with their own pools, registries and vector
shards; requests alternate between them and are counted together.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.chat.repository import TurnUsage, save_turn
from app.config import Settings
from app.db.pool import tenant_transaction
from app.limits.store import RedisCounters
from app.llm.run import AttemptRecord
from app.main import create_app
from app.tenancy.manifest import LimitsSpec
from app.tenancy.scope import Role, TenantScope
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant
from tests.security.test_api_keys import bearer, create_key
from tests.servers import find_redis_server, free_port, redis_server

Client = AsyncTestClient[Litestar]
Replicas = tuple[tuple[Litestar, Client], tuple[Litestar, Client]]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    with redis_server(binary) as url:
        yield url


@pytest.fixture(scope="module", params=["postgres", "redis"])
async def replicas(
    request: pytest.FixtureRequest, settings: Settings, tmp_root: Path
) -> AsyncIterator[Replicas]:
    """Two app instances counting in the same store."""
    store_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    apps = []
    for _ in range(2):
        copy = settings.model_copy(deep=True)
        copy.vectors.path = tmp_root / f"qdrant-rl-{uuid.uuid4().hex[:8]}"
        copy.redis_url = store_url
        apps.append(create_app(copy))
    async with AsyncTestClient(app=apps[0]) as first, AsyncTestClient(app=apps[1]) as second:
        yield (apps[0], first), (apps[1], second)


async def _tenant(make_tenant: TenantFactory, replicas: Replicas, **limits: Any) -> str:
    tenant = await make_tenant("rl", limits=LimitsSpec(**limits))
    for app, _ in replicas:
        await wait_for_tenant(app, tenant)
    return tenant


async def _same_window() -> None:
    """Start counting early in a minute, so a test's requests share one fixed window."""
    into = time.time() % 60
    if into > 45:
        await asyncio.sleep(60.5 - into)


async def _search(client: Client, headers: dict[str, str]) -> Any:
    return await client.post("/v1/search", json={"query": "anything"}, headers=headers)


async def test_tenant_limit_is_shared_by_both_replicas(
    request: pytest.FixtureRequest,
    replicas: Replicas,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
) -> None:
    (_, first), (_, second) = replicas
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=6)
    await _same_window()
    statuses = []
    for i in range(8):
        client = first if i % 2 == 0 else second
        response = await _search(client, auth(tenant, user=f"user-{i}"))
        statuses.append(response.status_code)
        if response.status_code == 200:
            assert response.headers["RateLimit-Policy"] == '"tenant";q=6;w=60'
            remaining, reset = _parse_ratelimit(response.headers["RateLimit"], "tenant")
            assert remaining == 5 - i
            assert 1 <= reset <= 60
    # Each replica alone saw 4 requests: only a shared count refuses the 7th and 8th.
    assert statuses == [200] * 6 + [429] * 2
    refused = await _search(second, auth(tenant))
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert _parse_ratelimit(refused.headers["RateLimit"], "tenant") == (0, retry_after)
    # The counts live in the store under test, not in either process.
    scope = TenantScope(tenant_id=tenant, subject="ops", roles=frozenset())
    async with tenant_transaction(app_pool, scope=scope) as connection:
        pg_hits = await connection.fetchval("SELECT hits FROM rate_counters")
    if request.node.callspec.params["replicas"] == "redis":
        assert pg_hits is None
        client = Redis.from_url(request.getfixturevalue("redis_url"))
        try:
            keys = await client.keys(f"bulkhead:rl:{{{tenant}}}:tenant:*")
            assert [int(await client.get(k)) for k in keys] == [9]
        finally:
            await client.aclose()
    else:
        assert pg_hits == 9


async def test_other_tenants_are_not_counted(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    (_, first), (_, second) = replicas
    busy = await _tenant(make_tenant, replicas, requests_per_minute=2)
    quiet = await _tenant(make_tenant, replicas, requests_per_minute=2)
    await _same_window()
    for client in (first, second):
        assert (await _search(client, auth(busy))).status_code == 200
    assert (await _search(first, auth(busy))).status_code == 429
    assert (await _search(second, auth(quiet))).status_code == 200


async def test_per_user_limit(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    (_, first), (_, second) = replicas
    tenant = await _tenant(
        make_tenant, replicas, requests_per_minute=100, requests_per_minute_per_user=3
    )
    await _same_window()
    for client in (first, second, first):
        ok = await _search(client, auth(tenant, user="alice"))
        assert ok.status_code == 200
    assert ok.headers["RateLimit-Policy"] == '"tenant";q=100;w=60, "user";q=3;w=60'
    assert _parse_ratelimit(ok.headers["RateLimit"], "user")[0] == 0
    refused = await _search(second, auth(tenant, user="alice"))
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert "user" in refused.json()["detail"]
    assert (await _search(first, auth(tenant, user="bob"))).status_code == 200


async def test_per_key_limit_counts_the_api_key(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    (_, first), (_, second) = replicas
    tenant = await _tenant(
        make_tenant, replicas, requests_per_minute=100, requests_per_minute_per_key=2
    )
    key = (await create_key(first, auth, tenant))["key"]
    await _same_window()
    assert (await _search(first, bearer(key))).status_code == 200
    assert (await _search(second, bearer(key))).status_code == 200
    refused = await _search(first, bearer(key))
    assert refused.status_code == 429
    assert '"key";q=2;w=60' in refused.headers["RateLimit-Policy"]
    # A user's JWT is not an API key: only the tenant limit applies to it.
    assert (await _search(second, auth(tenant))).status_code == 200


async def test_token_quota_refuses_chat_once_the_day_is_spent(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    (_, first), (_, second) = replicas
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=100, tokens_per_day=1)
    message = {"message": "How many vacation days do I get?"}
    answered = await first.post("/v1/chat", json=message, headers=auth(tenant))
    assert answered.status_code == 200, answered.text
    assert answered.json()["usage"]["input_tokens"] > 0
    refused = await second.post("/v1/chat", json=message, headers=auth(tenant))
    assert refused.status_code == 429
    assert refused.json()["code"] == "quota_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 86_400
    # Search spends no tokens: it still works.
    assert (await _search(second, auth(tenant))).status_code == 200


async def test_untouched_paths_carry_no_ratelimit_headers(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    (_, first), _ = replicas
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=1)
    for _ in range(3):
        response = await first.get("/v1/admin/usage", headers=auth(tenant, roles=(Role.ADMIN,)))
        assert response.status_code == 200
        assert "RateLimit" not in response.headers


async def test_unreachable_redis_admits_requests(
    settings: Settings, tmp_root: Path, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    copy = settings.model_copy(deep=True)
    copy.vectors.path = tmp_root / f"qdrant-rl-{uuid.uuid4().hex[:8]}"
    copy.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(copy)
    async with AsyncTestClient(app=app) as client:
        tenant = await make_tenant("rl", limits=LimitsSpec(requests_per_minute=1))
        await wait_for_tenant(app, tenant)
        for _ in range(2):
            response = await _search(client, auth(tenant))
            assert response.status_code == 200
            assert "RateLimit" not in response.headers


def _parse_ratelimit(value: str, policy: str) -> tuple[int, int]:
    name, *params = value.split(";")
    assert name == f'"{policy}"'
    fields = dict(p.split("=") for p in params)
    return int(fields["r"]), int(fields["t"])


async def test_redis_replica_reuses_the_token_total_for_at_most_its_ttl(
    redis_url: str, app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant("rl")
    store = RedisCounters.from_url(redis_url, app_pool, tokens_ttl=2.0)
    alice = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    try:
        assert (await store.hit(alice, ["tenant"], with_tokens=True)).tokens_today == 0
        usage = TurnUsage(
            attempts=(AttemptRecord("openai", "m", "ok", 1.0),),
            final=0,
            input_tokens=7,
            output_tokens=5,
            trace_id="0" * 32,
            cost_usd=0.0,
        )
        await save_turn(app_pool, scope=alice, usage=usage)
        assert (await store.hit(alice, ["tenant"], with_tokens=True)).tokens_today == 0
        await asyncio.sleep(2.05)
        counts = await store.hit(alice, ["tenant"], with_tokens=True)
        assert counts.tokens_today == 12
        assert counts.hits == {"tenant": 3}
    finally:
        await store.aclose()
