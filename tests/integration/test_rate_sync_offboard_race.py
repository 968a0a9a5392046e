"""A rate-limit sync racing an offboarding leaves no counters behind, in either order.

The sync (`bulkhead_rate_sync`, the runtime role) holds a tenant's rate-sync advisory lock
shared, offboarding's `delete_rows` exclusively. Each order is forced with two real
connections, the second one's wait observed in `pg_locks`, not slept for.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from app.db.pool import tenant_transaction
from app.lifecycle.offboard import delete_rows
from app.limits.policy import WINDOW_SECONDS
from app.limits.store import RATE_SYNC_LOCK_CLASS
from app.tenancy.scope import TenantScope
from tests.conftest import TenantFactory

SYNC = "SELECT * FROM bulkhead_rate_sync($1, $2, $3, $4, $5)"


async def _waits_for_advisory_lock(owner_pool: asyncpg.Pool, pid: int) -> None:
    deadline = time.monotonic() + 10
    while not await owner_pool.fetchval(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'"
        " AND NOT granted)",
        pid,
    ):
        assert time.monotonic() < deadline, f"backend {pid} never waited for the lock"
        await asyncio.sleep(0.01)


async def _counters(owner_pool: asyncpg.Pool, tenant: str) -> int:
    count: int = await owner_pool.fetchval(
        "SELECT count(*) FROM rate_counters WHERE tenant_id = $1", tenant
    )
    return count


async def test_offboarding_waits_for_a_sync_under_way_and_deletes_what_it_wrote(
    make_tenant: TenantFactory, app_pool: asyncpg.Pool, owner_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant("race")
    window = int(time.time() // WINDOW_SECONDS)
    async with app_pool.acquire() as syncing, owner_pool.acquire() as offboarding:
        transaction = syncing.transaction()
        await transaction.start()
        rows = await syncing.fetch(SYNC, [tenant], ["tenant"], [window], [3], [])
        assert [r["o_count"] for r in rows] == [3]
        deleting = asyncio.ensure_future(delete_rows(offboarding, tenant_id=tenant))
        await _waits_for_advisory_lock(owner_pool, offboarding.get_server_pid())
        assert not deleting.done()
        await transaction.commit()
        deleted = await deleting
    assert deleted["rate_counters"] == 1
    assert await _counters(owner_pool, tenant) == 0


async def test_a_sync_waiting_for_offboarding_finds_no_tenant_and_writes_nothing(
    make_tenant: TenantFactory, app_pool: asyncpg.Pool, owner_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant("race")
    window = int(time.time() // WINDOW_SECONDS)
    scope = TenantScope.system(tenant, actor="bulkhead:test")
    async with owner_pool.acquire() as offboarding, app_pool.acquire() as syncing:
        # What `delete_rows` does first, held open: the lock, then the tenant's rows.
        async with tenant_transaction(offboarding, scope=scope):
            await offboarding.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", RATE_SYNC_LOCK_CLASS, tenant
            )
            await offboarding.execute("DELETE FROM tenants WHERE id = $1", tenant)
            sync = asyncio.ensure_future(
                syncing.fetch(SYNC, [tenant], ["tenant"], [window], [3], [tenant])
            )
            await _waits_for_advisory_lock(owner_pool, syncing.get_server_pid())
            assert not sync.done()
        rows = await sync
    assert rows == []
    assert await _counters(owner_pool, tenant) == 0
