"""The audit trail: one row per authenticated request, written off the hot path, never dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.audit.writer import AuditRow, AuditWriter
from app.db.pool import tenant_transaction
from app.tenancy.scope import TenantScope
from tests.conftest import AuthHeaders, TenantFactory

Client = AsyncTestClient[Litestar]


def _row(tenant_id: str, status: int = 200) -> AuditRow:
    return AuditRow(
        tenant_id=tenant_id,
        occurred_at=datetime.now(UTC),
        principal="alice",
        credential_id="jwt:test",
        method="GET",
        route="/v1/documents",
        status=status,
        latency_ms=1.0,
        source_ip="127.0.0.1",
        trace_id="0" * 32,
    )


async def _audit_rows(pool: asyncpg.Pool, tenant_id: str) -> list[asyncpg.Record]:
    scope = TenantScope(tenant_id=tenant_id, subject="auditor", roles=frozenset())
    async with tenant_transaction(pool, scope=scope) as connection:
        return await connection.fetch("SELECT * FROM audit_events ORDER BY id")


async def test_each_authenticated_request_leaves_one_row(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders,
    app_pool: asyncpg.Pool,
) -> None:  # fmt: skip
    tenant, other = tenant_pair
    headers = auth(tenant)
    await client.get("/v1/documents", headers=headers)
    await client.delete("/v1/documents/nope", headers=headers)
    await client.get("/v1/documents", headers=headers | {"X-Tenant-ID": other})
    await client.post("/v1/search", json={"query": "x"})  # unauthenticated: no tenant to file under
    # The writer lives in the app's event loop (another thread here): wait for its batch.
    async with asyncio.timeout(5):
        while len(rows := await _audit_rows(app_pool, tenant)) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert [(r["method"], r["route"], r["status"]) for r in rows] == [
        ("GET", "/v1/documents", 200),
        ("DELETE", "/v1/documents/{document_id}", 404),
        ("GET", "/v1/documents", 403),
    ]
    token = headers["Authorization"].split()[1]
    for row in rows:
        assert row["principal"] == "alice"
        assert row["credential_id"].startswith("jwt:")
        assert len(row["trace_id"]) == 32
        assert token not in str(dict(row))


async def test_full_buffer_applies_back_pressure_and_loses_nothing(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    writer = AuditWriter(app_pool, buffer_size=2, batch_size=10, flush_interval=0.01)
    await writer.record(_row(tenant))
    await writer.record(_row(tenant))
    third = asyncio.ensure_future(writer.record(_row(tenant, status=201)))
    await asyncio.sleep(0.1)
    assert not third.done(), "a full buffer must make the caller wait, not drop the row"
    writer.start()
    await asyncio.wait_for(third, 5)
    await writer.close()
    rows = await _audit_rows(app_pool, tenant)
    assert [r["status"] for r in rows] == [200, 200, 201]


async def test_close_drains_the_buffer(app_pool: asyncpg.Pool, make_tenant: TenantFactory) -> None:
    tenant = await make_tenant()
    writer = AuditWriter(app_pool, buffer_size=1000, batch_size=7, flush_interval=10)
    writer.start()
    for _ in range(50):
        await writer.record(_row(tenant))
    await writer.close()
    assert len(await _audit_rows(app_pool, tenant)) == 50


async def test_rows_of_a_vanished_tenant_do_not_stall_the_trail(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    writer = AuditWriter(app_pool, buffer_size=10, batch_size=1, flush_interval=0.01)
    writer.start()
    await writer.record(_row("never-existed"))
    await writer.record(_row(tenant))
    await asyncio.wait_for(writer.close(), 5)
    assert len(await _audit_rows(app_pool, tenant)) == 1
