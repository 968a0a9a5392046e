"""Rate limits and token quotas across two replicas sharing one counter store.

Each store (Postgres by default, a real `redis-server` on loopback with
`BULKHEAD_REDIS_URL`) serves two app instances with their own pools, registries, limiters and
vector shards; requests alternate between them, or hammer both at once, and are counted
together. Tests that assert a per-request count (the first ones) run the tenant in exact
admission; the default, local admission, is tested against its stated bound
(`app/limits/local.py`), across window rollover, store outages and its memory bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.chat.repository import TurnUsage, save_turn
from app.config import Settings
from app.db.pool import create_pool, tenant_transaction
from app.db.registry import TenantRegistry
from app.db.urls import with_user
from app.limits.middleware import RequestLimiter
from app.limits.policy import WINDOW_SECONDS, Decision, RateLimited
from app.limits.store import CounterStore, PostgresCounters, Push, RedisCounters
from app.llm.run import AttemptRecord
from app.main import create_app
from app.tenancy.manifest import LimitsSpec
from app.tenancy.scope import Role, TenantScope
from tests.conftest import APP_ROLE, AuthHeaders, TenantFactory, wait_for_tenant
from tests.security.test_api_keys import bearer, create_key
from tests.servers import OutageProxy, find_redis_server, free_port, redis_server

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
    tenant = await _tenant(make_tenant, replicas, admission="exact", requests_per_minute=6)
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
    busy = await _tenant(make_tenant, replicas, admission="exact", requests_per_minute=2)
    quiet = await _tenant(make_tenant, replicas, admission="exact", requests_per_minute=2)
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
        make_tenant,
        replicas,
        admission="exact",
        requests_per_minute=100,
        requests_per_minute_per_user=3,
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
        make_tenant,
        replicas,
        admission="exact",
        requests_per_minute=100,
        requests_per_minute_per_key=2,
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
    tenant = await _tenant(
        make_tenant, replicas, admission="exact", requests_per_minute=100, tokens_per_day=1
    )
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


async def test_unreachable_redis_admits_requests_in_exact_mode(
    settings: Settings, tmp_root: Path, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    copy = settings.model_copy(deep=True)
    copy.vectors.path = tmp_root / f"qdrant-rl-{uuid.uuid4().hex[:8]}"
    copy.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(copy)
    async with AsyncTestClient(app=app) as client:
        tenant = await make_tenant(
            "rl", limits=LimitsSpec(requests_per_minute=1, admission="exact")
        )
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


# Local admission (the default): counted in each replica, synced in batches.


def _limiter(client: Client) -> RequestLimiter:
    app: Litestar = client.app  # type: ignore[assignment]
    limiter: RequestLimiter = app.state.resources.limiter
    return limiter


async def _sync(*clients: Client) -> list[bool]:
    """Each replica's `sync_now`, run in its own event loop (the test client's portal thread)."""
    return [
        await asyncio.to_thread(client.blocking_portal.call, _limiter(client).sync_now)
        for client in clients
    ]


async def _burst(client: Client, headers: dict[str, str], count: int) -> list[int]:
    """`count` searches sent to one replica all at once; their statuses.

    The test client runs one request at a time, so the requests go through an ASGI client
    inside the replica's own event loop, where they overlap as they would on a server.
    """
    app: Litestar = client.app  # type: ignore[assignment]

    async def send_all() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as http:
            responses = await asyncio.gather(
                *(
                    http.post("/v1/search", json={"query": "anything"}, headers=headers)
                    for _ in range(count)
                )
            )
        return [response.status_code for response in responses]

    return await asyncio.to_thread(client.blocking_portal.call, send_all)


def _store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.node.callspec.params["replicas"]
    return kind


async def _window_counts(
    request: pytest.FixtureRequest, app_pool: asyncpg.Pool, tenant: str, bucket: str = "tenant"
) -> dict[int, int]:
    """The bucket's counts in the store under test, by window (minutes since the epoch)."""
    if _store_kind(request) == "redis":
        client = Redis.from_url(request.getfixturevalue("redis_url"))
        try:
            keys = await client.keys(f"bulkhead:rl:{{{tenant}}}:{bucket}:*")
            return {int(k.rsplit(b":", 1)[1]): int(await client.get(k)) for k in keys}
        finally:
            await client.aclose()
    scope = TenantScope(tenant_id=tenant, subject="ops", roles=frozenset())
    async with tenant_transaction(app_pool, scope=scope) as connection:
        rows = await connection.fetch(
            "SELECT extract(epoch FROM window_start)::bigint / 60 AS w, hits FROM rate_counters"
            " WHERE bucket = $1",
            bucket,
        )
    return {row["w"]: row["hits"] for row in rows}


def _own_store(
    request: pytest.FixtureRequest, app_pool: asyncpg.Pool, url: str | None = None
) -> CounterStore:
    """A store of the kind under test, for a limiter the test builds itself."""
    if _store_kind(request) == "redis":
        return RedisCounters.from_url(url or request.getfixturevalue("redis_url"), app_pool)
    return PostgresCounters(app_pool)


def _registry(replicas: Replicas) -> TenantRegistry:
    registry: TenantRegistry = replicas[0][0].state.resources.registry
    return registry


async def _admit(limiter: RequestLimiter, scope: TenantScope, *, tokens: bool = False) -> bool:
    """Whether the limiter admits one request of `scope` (True) or refuses it as rate limited."""
    try:
        await limiter.admit(scope, spends_tokens=tokens)
    except RateLimited:
        return False
    return True


async def _poll(condition: Callable[[], Any], *, seconds: float = 5.0) -> None:
    """Wait until the awaitable `condition()` is true, or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {seconds} s")
        await asyncio.sleep(0.02)


async def test_local_over_admission_stays_within_what_the_other_replica_admits_between_syncs(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    """Both replicas hammered in rounds: `burst` requests each at once, then both sync.

    The stated bound with R = 2 replicas: admitted <= limit + (R - 1) x what one replica
    admits between two syncs (here at most `burst`). No under-admission: at least the limit.
    The background syncs keep running; extra syncs only shorten the stretches between reads.
    """
    (_, first), (_, second) = replicas
    limit, burst = 30, 4
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=limit)
    headers = auth(tenant)
    await _same_window()
    admitted = 0
    for _ in range(limit + burst + 2):
        rounds = await asyncio.gather(_burst(first, headers, burst), _burst(second, headers, burst))
        statuses = rounds[0] + rounds[1]
        assert set(statuses) <= {200, 429}
        admitted += statuses.count(200)
        assert await _sync(first, second) == [True, True]
        if 200 not in statuses:
            break
    else:
        pytest.fail("the replicas never stopped admitting")
    assert limit <= admitted <= limit + burst


async def test_background_syncs_bring_every_count_to_the_store(
    request: pytest.FixtureRequest,
    replicas: Replicas,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
) -> None:
    """No forced sync: twice the limit at once, half on each replica."""
    (_, first), (_, second) = replicas
    limit = 20
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=limit)
    headers = auth(tenant)
    await _same_window()
    on_first, on_second = await asyncio.gather(
        _burst(first, headers, limit), _burst(second, headers, limit)
    )
    admitted = (on_first + on_second).count(200)
    # At least the limit; and no replica ever admits more than the limit on its own count.
    assert limit <= admitted <= 2 * limit
    assert max(on_first.count(200), on_second.count(200)) <= limit
    window = int(time.time() // WINDOW_SECONDS)

    async def all_counted() -> bool:
        return await _window_counts(request, app_pool, tenant) == {window: 2 * limit}

    # Every request (refused ones too) reaches the store once, within a few sync intervals.
    await _poll(all_counted)


async def test_exact_admission_never_goes_over_under_concurrency(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    (_, first), (_, second) = replicas
    limit = 20
    tenant = await _tenant(make_tenant, replicas, admission="exact", requests_per_minute=limit)
    headers = auth(tenant)
    await _same_window()
    on_first, on_second = await asyncio.gather(
        _burst(first, headers, 15), _burst(second, headers, 15)
    )
    assert (on_first + on_second).count(200) == limit


async def test_local_headers_report_the_replicas_view(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    """`r=` counts down on each replica's own view; a sync brings in the other's requests."""
    (_, first), (_, second) = replicas
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=6)
    await _same_window()
    for remaining in (5, 4):
        response = await _search(first, auth(tenant))
        assert response.status_code == 200
        assert _parse_ratelimit(response.headers["RateLimit"], "tenant")[0] == remaining
    assert await _sync(first) == [True]
    response = await _search(second, auth(tenant))
    assert _parse_ratelimit(response.headers["RateLimit"], "tenant")[0] == 5  # its own only
    assert await _sync(second) == [True]  # reads back 3: two on the first, one here
    response = await _search(second, auth(tenant))
    assert response.headers["RateLimit-Policy"] == '"tenant";q=6;w=60'
    remaining, reset = _parse_ratelimit(response.headers["RateLimit"], "tenant")
    assert remaining == 2
    assert 1 <= reset <= 60


async def test_local_quota_is_refused_within_one_sync_of_the_tokens_being_spent(
    replicas: Replicas, make_tenant: TenantFactory, auth: AuthHeaders
) -> None:
    (_, first), (_, second) = replicas
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=100, tokens_per_day=1)
    message = {"message": "How many vacation days do I get?"}
    answered = await first.post("/v1/chat", json=message, headers=auth(tenant))
    assert answered.status_code == 200, answered.text
    assert answered.json()["usage"]["input_tokens"] > 0
    for client in (second, first):
        # A replica reads today's total at the sync after a chat request, and decides on the
        # total it last read (the first may have read it before the tokens were charged, the
        # second never has): the next chat may go through; after one sync, none does.
        await client.post("/v1/chat", json=message, headers=auth(tenant))
        assert await _sync(client) == [True]
        refused = await client.post("/v1/chat", json=message, headers=auth(tenant))
        assert refused.status_code == 429
        assert refused.json()["code"] == "quota_exceeded"
        assert 1 <= int(refused.headers["Retry-After"]) <= 86_400
    assert (await _search(second, auth(tenant))).status_code == 200


async def test_window_rollover_counts_each_request_in_its_own_window(
    request: pytest.FixtureRequest,
    replicas: Replicas,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
) -> None:
    """A limiter on a clock the test moves: requests before the minute's end stay in it."""
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=3)
    await _same_window()
    now = [time.monotonic()]  # the test's clock starts at the real one, then jumps
    store = _own_store(request, app_pool)
    limiter = RequestLimiter(store, _registry(replicas), sync_interval=3600, clock=lambda: now[0])
    alice = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    try:
        window = int(time.time() // WINDOW_SECONDS)
        assert [await _admit(limiter, alice) for _ in range(4)] == [True] * 3 + [False]
        assert await limiter.sync_now()
        assert await _window_counts(request, app_pool, tenant) == {window: 4}
        assert not await _admit(limiter, alice)  # counted in `window`, not pushed yet
        now[0] += WINDOW_SECONDS
        decision = await limiter.admit(alice, spends_tokens=False)
        assert isinstance(decision, Decision)
        assert decision.counts.hits == {"tenant": 1}
        assert 0 < decision.counts.reset_seconds <= WINDOW_SECONDS
        assert limiter.local.size() == (1, 2)
        assert await limiter.sync_now()
        counts = await _window_counts(request, app_pool, tenant)
        # The late request of the old window never lands in the new one.
        assert counts[window + 1] == 1
        if _store_kind(request) == "redis":
            assert counts == {window: 5, window + 1: 1}
        else:  # one row per bucket: the newest window only
            assert counts == {window + 1: 1}
        assert await limiter.sync_now()
        assert limiter.local.size() == (1, 1)  # the old window's count is gone
    finally:
        await limiter.aclose()


async def test_memory_holds_the_current_window_and_todays_token_totals_only(
    request: pytest.FixtureRequest,
    replicas: Replicas,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
) -> None:
    busy = await _tenant(
        make_tenant, replicas, requests_per_minute=10_000, requests_per_minute_per_user=10
    )
    idle = await _tenant(make_tenant, replicas)
    now = [time.monotonic()]
    store = _own_store(request, app_pool)
    limiter = RequestLimiter(store, _registry(replicas), sync_interval=3600, clock=lambda: now[0])
    try:
        for n in range(300):
            user = TenantScope(tenant_id=busy, subject=f"user-{n}", roles=frozenset())
            assert await _admit(limiter, user, tokens=n == 0)
        assert await _admit(limiter, TenantScope(tenant_id=idle, subject="x", roles=frozenset()))
        assert limiter.local.size() == (2, 302)
        assert await limiter.sync_now()  # one statement or script call for all 302 counts
        later = time.time() + 2 * WINDOW_SECONDS
        same_day = int(later // 86_400) == int(time.time() // 86_400)
        now[0] += 2 * WINDOW_SECONDS
        assert await limiter.sync_now()
        # Windows gone; `busy` keeps the one number it read today (its token total), unless
        # those two minutes crossed UTC midnight.
        assert limiter.local.size() == ((1, 0) if same_day else (0, 0))
        now[0] += 86_400
        assert await limiter.sync_now()
        assert limiter.local.size() == (0, 0)
    finally:
        await limiter.aclose()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def levels(self) -> list[tuple[int, str]]:
        return [(r.levelno, r.getMessage()) for r in self.records]


@pytest.fixture
def limit_logs() -> Iterator[_Records]:
    """What `app.limits` logs during the test.

    A handler on its own logger: an app's start-up replaces the root logger's handlers,
    caplog's included.
    """
    logger = logging.getLogger("app.limits")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _via(url: str, port: int) -> str:
    """`url` with its host and port replaced by the outage proxy's.

    A Unix socket's `host` and `port` query parameters are dropped: the proxy is TCP.
    """
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


async def test_store_outage_keeps_the_replica_to_its_own_count_and_warns_once(
    request: pytest.FixtureRequest,
    replicas: Replicas,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
    database_url: str,
    limit_logs: _Records,
) -> None:
    """The store goes away (its port closes) and comes back, behind a relay the test cuts."""
    tenant = await _tenant(make_tenant, replicas, requests_per_minute=5)
    redis = _store_kind(request) == "redis"
    upstream = request.getfixturevalue("redis_url") if redis else with_user(database_url, APP_ROLE)
    proxy = await OutageProxy.to_url(upstream).start()
    pool = None
    if redis:
        store: CounterStore = RedisCounters.from_url(_via(upstream, proxy.port), app_pool)
    else:
        pool = await create_pool(
            _via(upstream, proxy.port), min_size=0, max_size=2, connect_timeout=2
        )
        store = PostgresCounters(pool)
    limiter = RequestLimiter(store, _registry(replicas), sync_interval=3600)
    alice = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    try:
        await _same_window()
        window = int(time.time() // WINDOW_SECONDS)
        assert [await _admit(limiter, alice) for _ in range(2)] == [True, True]
        assert await limiter.sync_now()
        await proxy.cut()
        assert await _admit(limiter, alice)
        assert await limiter.sync_now() is False
        decision = await limiter.admit(alice, spends_tokens=False)
        assert decision is not None
        assert decision.counts.shared is False  # the span's outcome: store_error
        assert [await _admit(limiter, alice) for _ in range(3)] == [True, False, False]
        for _ in range(3):
            assert await limiter.sync_now() is False
        [(level, message)] = limit_logs.levels()
        assert level == logging.WARNING
        assert "rate-limit store unavailable" in message
        await proxy.restore()
        assert await limiter.sync_now()
        [_, (level, message)] = limit_logs.levels()
        assert level == logging.INFO
        assert "reachable again" in message
        # Nothing counted during the outage was lost, nor counted twice.
        assert await _window_counts(request, app_pool, tenant) == {window: 7}
    finally:
        await limiter.aclose()
        if pool is not None:
            await pool.close()
        await proxy.cut()


async def test_unreachable_redis_local_admission_enforces_the_replicas_own_count(
    settings: Settings,
    tmp_root: Path,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    spans: Any,
    limit_logs: _Records,
) -> None:
    copy = settings.model_copy(deep=True)
    copy.vectors.path = tmp_root / f"qdrant-rl-{uuid.uuid4().hex[:8]}"
    copy.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(copy)
    async with AsyncTestClient(app=app) as client:
        tenant = await make_tenant("rl", limits=LimitsSpec(requests_per_minute=2))
        await wait_for_tenant(app, tenant)
        await _same_window()
        first = await _search(client, auth(tenant))
        assert first.status_code == 200
        assert _parse_ratelimit(first.headers["RateLimit"], "tenant")[0] == 1
        assert await _sync(client) == [False]
        statuses = [(await _search(client, auth(tenant))).status_code for _ in range(3)]
        assert statuses == [200, 429, 429]
        assert await _sync(client) == [False]
    outcomes = [
        span.attributes["bulkhead.ratelimit.outcome"]
        for span in spans.get_finished_spans()
        if span.attributes and "bulkhead.ratelimit.outcome" in span.attributes
    ]
    assert outcomes == ["admitted", "store_error", "rate_limited", "rate_limited"]
    # One outage, one warning: not one per request or per sync (shutdown's flush included).
    assert [level for level, _ in limit_logs.levels()] == [logging.WARNING]


async def test_one_sync_counts_several_tenants_each_under_its_own_policy(
    request: pytest.FixtureRequest,
    replicas: Replicas,
    make_tenant: TenantFactory,
    app_pool: asyncpg.Pool,
) -> None:
    first = await _tenant(make_tenant, replicas)
    second = await _tenant(make_tenant, replicas)
    store = _own_store(request, app_pool)
    scopes = [TenantScope.system(t, actor="bulkhead:test") for t in (first, second)]
    window = int(time.time() // WINDOW_SECONDS)
    pushes = [
        Push(scopes[0], "tenant", window, 3),
        Push(scopes[0], "user:u1", window, 2),
        Push(scopes[1], "tenant", window, 5),
    ]
    postgres = _store_kind(request) == "postgres"
    if postgres:
        # Offboarded since its requests were counted: skipped, the rest of the batch counts.
        gone = TenantScope.system(f"gone-{uuid.uuid4().hex[:8]}", actor="bulkhead:test")
        pushes.append(Push(gone, "tenant", window, 1))
    try:
        answer = await store.sync(pushes, [scopes[1]])
        again = await store.sync([Push(scopes[0], "tenant", window, 1)], [])
    finally:
        await store.aclose()
    assert answer.totals == {
        (first, "tenant", window): 3,
        (first, "user:u1", window): 2,
        (second, "tenant", window): 5,
    }
    assert again.totals == {(first, "tenant", window): 4}
    today = int(time.time() // 86_400)
    assert answer.tokens == {second: (today, 0)}  # only the tenant asked for
    assert answer.store_time is not None
    assert abs(answer.store_time - time.time()) < 5
    if postgres:
        # Each tenant's rows were written under its own RLS setting: only it sees them.
        for tenant, expected in ((first, {"tenant": 4, "user:u1": 2}), (second, {"tenant": 5})):
            scope = TenantScope(tenant_id=tenant, subject="ops", roles=frozenset())
            async with tenant_transaction(app_pool, scope=scope) as connection:
                rows = await connection.fetch("SELECT tenant_id, bucket, hits FROM rate_counters")
            assert {r["bucket"]: r["hits"] for r in rows} == expected
            assert {r["tenant_id"] for r in rows} == {tenant}


async def test_the_runtime_role_alone_may_run_the_sync_function(owner_pool: asyncpg.Pool) -> None:
    granted = await owner_pool.fetchrow(
        "SELECT has_function_privilege($1, $2, 'EXECUTE') AS app,"
        " has_function_privilege('public', $2, 'EXECUTE') AS public",
        APP_ROLE,
        "bulkhead_rate_sync(text[], text[], bigint[], integer[], text[])",
    )
    assert (granted["app"], granted["public"]) == (True, False)


async def test_shutdown_pushes_the_last_counts(
    settings: Settings,
    tmp_root: Path,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    app_pool: asyncpg.Pool,
) -> None:
    copy = settings.model_copy(deep=True)
    copy.vectors.path = tmp_root / f"qdrant-rl-{uuid.uuid4().hex[:8]}"
    copy.limits.rate_limit_sync_seconds = 10  # the longest: no background sync in this test
    app = create_app(copy)
    tenant = await make_tenant("rl", limits=LimitsSpec(requests_per_minute=100))
    scope = TenantScope(tenant_id=tenant, subject="ops", roles=frozenset())
    await _same_window()
    async with AsyncTestClient(app=app) as client:
        await wait_for_tenant(app, tenant)
        for _ in range(3):
            assert (await _search(client, auth(tenant))).status_code == 200
        async with tenant_transaction(app_pool, scope=scope) as connection:
            assert await connection.fetchval("SELECT hits FROM rate_counters") is None
    async with tenant_transaction(app_pool, scope=scope) as connection:
        assert await connection.fetchval("SELECT hits FROM rate_counters") == 3
