"""Two Bulkhead replicas on one database: revocations and tenant changes reach both within 1 s."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.db.registry import TenantRegistry
from app.db.urls import with_user
from app.main import create_app
from app.tenancy.scope import Role
from tests.conftest import AuthHeaders, wait_for_tenant
from tests.security.test_api_keys import bearer, create_key, search

Client = AsyncTestClient[Litestar]
PROPAGATION_BUDGET_SECONDS = 1.0


@pytest.fixture(scope="module")
async def replica(settings: Settings, tmp_root: Path) -> AsyncIterator[tuple[Litestar, Client]]:
    """A second app on the same database (its own pool, listeners, caches and vector shard)."""
    second = settings.model_copy(deep=True)
    second.vectors.path = tmp_root / f"qdrant-replica-{uuid.uuid4().hex[:8]}"
    app = create_app(second)
    async with AsyncTestClient(app=app) as client:
        yield app, client


async def _until(client: Client, request: Any, status: int) -> float:
    """Seconds until `request()` answers `status` (polling), or fail after 5 s."""
    started = time.perf_counter()
    while time.perf_counter() - started < 5:
        if (await request(client)).status_code == status:
            return time.perf_counter() - started
    pytest.fail(f"status {status} not reached within 5 s")


async def test_revocation_reaches_the_other_replica_within_a_second(
    client: Client,
    app: Litestar,
    replica: tuple[Litestar, Client],
    auth: AuthHeaders,
    tenant_pair: tuple[str, str],
) -> None:
    other_app, other = replica
    tenant = tenant_pair[0]
    await wait_for_tenant(other_app, tenant)
    created = await create_key(client, auth, tenant)
    key = created["key"]
    # Both replicas have the key cached and valid.
    assert (await search(client, key)).status_code == 200
    assert (await search(other, key)).status_code == 200
    revoke = await client.delete(
        f"/v1/admin/api-keys/{created['api_key']['id']}", headers=auth(tenant, roles=(Role.ADMIN,))
    )
    assert revoke.status_code == 204
    elapsed = await _until(other, lambda c: search(c, key), 401)
    assert elapsed <= PROPAGATION_BUDGET_SECONDS


async def test_exchanged_token_is_refused_on_the_other_replica_after_revocation(
    client: Client,
    replica: tuple[Litestar, Client],
    auth: AuthHeaders,
    tenant_pair: tuple[str, str],
) -> None:
    other_app, other = replica
    tenant = tenant_pair[0]
    await wait_for_tenant(other_app, tenant)
    created = await create_key(client, auth, tenant)
    token = (await client.post("/v1/auth/token", headers=bearer(created["key"]))).json()
    service_jwt = token["access_token"]
    assert (await search(other, service_jwt)).status_code == 200  # same signing key
    await client.delete(
        f"/v1/admin/api-keys/{created['api_key']['id']}", headers=auth(tenant, roles=(Role.ADMIN,))
    )
    elapsed = await _until(other, lambda c: search(c, service_jwt), 401)
    assert elapsed <= PROPAGATION_BUDGET_SECONDS


async def test_disabling_a_tenant_reaches_both_replicas_within_a_second(
    client: Client,
    replica: tuple[Litestar, Client],
    auth: AuthHeaders,
    tenant_pair: tuple[str, str],
    owner_pool: asyncpg.Pool,
) -> None:
    other_app, other = replica
    tenant = tenant_pair[1]
    await wait_for_tenant(other_app, tenant)
    headers = auth(tenant)

    async def request(c: Client) -> Any:
        return await c.post("/v1/search", json={"query": "x"}, headers=headers)

    assert (await request(client)).status_code == 200
    assert (await request(other)).status_code == 200
    async with owner_pool.acquire() as connection, connection.transaction():
        await connection.execute("UPDATE tenants SET status = 'disabled' WHERE id = $1", tenant)
        await connection.execute("SELECT pg_notify('bulkhead_tenants', $1)", tenant)
    for replica_client in (client, other):
        elapsed = await _until(replica_client, request, 403)
        assert elapsed <= PROPAGATION_BUDGET_SECONDS
    response = await request(other)
    assert response.json()["code"] == "forbidden"


async def test_registry_reconnects_a_lost_listener_and_catches_up(
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    database_url: str,
    make_tenant: Any,
) -> None:
    """A replica whose LISTEN connection dies still learns of tenants onboarded afterwards."""
    registry = TenantRegistry(app_pool)
    await registry.load()
    await registry.listen(with_user(database_url, "bulkhead_app"))
    try:
        listener = registry._listener
        assert listener is not None
        await owner_pool.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
        tenant = await make_tenant("late")
        async with asyncio.timeout(5):
            while registry.tenant(tenant) is None:  # noqa: ASYNC110 - polled state
                await asyncio.sleep(0.02)
        assert registry._listener is not None
        assert registry._listener is not listener
    finally:
        await registry.close()
