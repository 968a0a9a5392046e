"""One tenant's trouble never costs another tenant's audit rows.

Two replicas (uvicorn processes on the test database) serve a bystander tenant and a tenant
that is offboarded under load. Audit rows of the offboarded tenant answered before its
removal can no longer be written (`audit_events_tenant_id_fkey`); the bystander's rows
queued in the same batches must be written all the same, and the refused rows reported.

To make "a batch holds rows of both tenants and the tenant is gone by the time it is
written" certain rather than lucky, the test holds the doomed tenant's audit append lock
(the real `pg_advisory_xact_lock` the writers take, from an owner session) while it
offboards the tenant: both replicas' writers wait on it with mixed batches in hand and
write them once the tenant is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.audit.chain import LOCK_CLASS
from app.config import Settings
from app.db.pool import connect
from app.identity.dev_issuer import DevIssuer
from app.lifecycle.offboard import delete_rows
from tests.conftest import AuthHeaders, TenantFactory
from tests.live_server import serve_replica, wait_until_known


@pytest.fixture(scope="module")
def second_replica(
    settings: Settings, tmp_root: Path, kek: bytes, dev_issuer: DevIssuer
) -> Iterator[str]:
    with serve_replica(settings, tmp_root / "audit-replica") as base:
        yield base


async def _until(predicate: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_offboarding_under_load_costs_the_bystander_no_audit_row(
    live_server: str,
    second_replica: str,
    make_tenant: TenantFactory,
    auth: AuthHeaders,
    owner_pool: asyncpg.Pool,
    database_url: str,
    tmp_root: Path,
) -> None:
    # The old writer went through a batch in tenant-id order: the doomed tenant sorts first.
    doomed = await make_tenant("a-doomed")
    bystander = await make_tenant("z-bystander")
    headers = {doomed: auth(doomed), bystander: auth(bystander)}
    replicas = [httpx.AsyncClient(base_url=b, timeout=30) for b in (live_server, second_replica)]
    answered: dict[str, list[str]] = {doomed: [], bystander: []}
    stopping = asyncio.Event()

    async def traffic(client: httpx.AsyncClient, tenant: str) -> None:
        deadline = time.monotonic() + 120  # bounded even if the test never says stop
        while not stopping.is_set() and time.monotonic() < deadline:
            response = await client.get("/v1/conversations", headers=headers[tenant])
            if response.status_code == 200:
                answered[tenant].append(response.headers["x-trace-id"])

    async def waiting_writers() -> bool:
        # Sessions of this database waiting for an advisory lock: only audit appends take one.
        waiting = await owner_pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
        return int(waiting) >= len(replicas)

    def grown(tenants: tuple[str, ...], by: int) -> Callable[[], Awaitable[bool]]:
        mark = {t: len(answered[t]) for t in tenants}

        async def check() -> bool:
            return all(len(answered[t]) >= mark[t] + by for t in tenants)

        return check

    for client in replicas:
        for tenant in (doomed, bystander):
            await wait_until_known(client, headers[tenant])
    load = [asyncio.create_task(traffic(c, t)) for c in replicas for t in (doomed, bystander)]
    try:
        await _until(grown((doomed, bystander), 20), 30, "traffic of both tenants")
        holder = await asyncpg.connect(database_url)
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, doomed
                )
                await _until(waiting_writers, 30, "both replicas' audit writers to wait")
                # More rows of both tenants queue up behind the waiting batches.
                await _until(grown((doomed, bystander), 10), 30, "traffic while writers wait")
                offboarding = await connect(database_url)
                try:
                    await delete_rows(offboarding, tenant_id=doomed)
                finally:
                    await offboarding.close()
            # The lock is released: the writers meet a tenant that no longer exists.
        finally:
            await holder.close()
        await _until(grown((bystander,), 20), 30, "bystander traffic after the offboarding")
    finally:
        stopping.set()
        await asyncio.gather(*load)
        for client in replicas:
            await client.aclose()

    expected = set(answered[bystander])

    async def all_written() -> bool:
        return not await _missing(owner_pool, bystander, expected)

    try:
        await _until(all_written, 30, "the bystander's audit rows")
    except pytest.fail.Exception:
        missing = await _missing(owner_pool, bystander, expected)
        pytest.fail(f"{len(missing)} of {len(expected)} bystander audit rows were never written")
    # The doomed tenant's refused rows were reported, not dropped in silence.
    logs = (tmp_root / "audit-replica" / "server.log").read_text()
    logs += (tmp_root / "live-server" / "server.log").read_text()
    assert f"audit row rejected (tenant_gone), not written: tenant={doomed}" in logs


async def _missing(pool: asyncpg.Pool, tenant: str, traces: set[str]) -> set[str]:
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
        rows = await connection.fetch(
            "SELECT trace_id FROM audit_events WHERE tenant_id = $1 AND trace_id = ANY($2)",
            tenant,
            list(traces),
        )
    return traces - {r["trace_id"] for r in rows}
