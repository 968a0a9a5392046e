"""The audit writer across a Postgres outage: rows wait for it, or are reported at shutdown.

A private Postgres (tests/pg_server.py, never the machine's shared one) is stopped under the
writer: rows recorded meanwhile are written, chained, once it is back; a writer closed while
it is still down reports every unwritten row (log line and `bulkhead.audit.unwritten`).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from app.audit.chain import verify
from app.audit.writer import AuditRow, AuditWriter
from app.db.embedded import ensure_database
from app.db.migrate import upgrade
from app.db.pool import create_pool, tenant_transaction
from app.db.urls import with_database, with_user
from app.tenancy.scope import TenantScope
from tests.conftest import APP_ROLE, counter_value
from tests.pg_server import ScratchPostgres


@pytest.fixture(scope="module")
def scratch_pg() -> Iterator[ScratchPostgres]:
    # Not pytest's tmp_path: its 0700 parents keep out the server's own system user (as root).
    with tempfile.TemporaryDirectory(prefix="bulkhead-audit-pg-") as root:
        server = ScratchPostgres(Path(root))
        try:
            yield server
        finally:
            server.close()


@pytest.fixture(scope="module")
def database(scratch_pg: ScratchPostgres) -> str:
    asyncio.run(ensure_database(scratch_pg.url, "bulkhead"))
    url = with_database(scratch_pg.url, "bulkhead")
    upgrade(url, app_role=APP_ROLE)
    return url


@pytest.fixture
async def tenant(database: str) -> str:
    tenant_id = f"outage-{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(database)
    try:
        await connection.execute(
            "INSERT INTO tenants (id, name, manifest, manifest_sha256)"
            " VALUES ($1, $1, '{}'::jsonb, '')",
            tenant_id,
        )
    finally:
        await connection.close()
    return tenant_id


@pytest.fixture
async def writer(database: str, scratch_pg: ScratchPostgres) -> AsyncIterator[AuditWriter]:
    pool = await create_pool(with_user(database, APP_ROLE), min_size=1, max_size=2)
    audit = AuditWriter(pool, buffer_size=100, batch_size=10, flush_interval=0.05)
    audit.start()
    yield audit
    if scratch_pg.postmaster_pid() is None:
        scratch_pg.start()
    await audit.close(grace_seconds=5)
    pool.terminate()


def _row(tenant: str, n: int) -> AuditRow:
    return AuditRow(
        tenant_id=tenant,
        occurred_at=datetime.now(UTC),
        principal="alice",
        credential_id="jwt:test",
        method="GET",
        route="/v1/documents",
        status=200,
        latency_ms=1.5,
        source_ip="127.0.0.1",
        trace_id=f"{n:032x}",
    )


async def _chain(database: str, tenant: str) -> tuple[int, bool]:
    connection = await asyncpg.connect(database)
    try:
        async with tenant_transaction(connection, scope=TenantScope.operator(tenant)):
            result = await verify(connection, tenant)
    finally:
        await connection.close()
    return result.rows, result.broken is None


async def test_rows_recorded_while_postgres_is_down_are_written_when_it_returns(
    scratch_pg: ScratchPostgres, database: str, tenant: str, writer: AuditWriter
) -> None:
    retries = counter_value("bulkhead.audit.retries")
    scratch_pg.stop("fast")
    for n in range(5):
        await writer.record(_row(tenant, n))
    # The writer has tried and failed at least twice: it keeps the rows and backs off.
    while counter_value("bulkhead.audit.retries") < retries + 2:  # noqa: ASYNC110 - a metric
        await asyncio.sleep(0.05)
    scratch_pg.start()
    await writer.flush()
    assert await _chain(database, tenant) == (5, True)


async def test_rows_still_unwritten_at_shutdown_are_logged_and_counted(
    scratch_pg: ScratchPostgres,
    tenant: str,
    writer: AuditWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    unwritten = counter_value("bulkhead.audit.unwritten")
    scratch_pg.stop("fast")
    rows = [_row(tenant, 100 + n) for n in range(3)]
    for row in rows:
        await writer.record(row)
    with caplog.at_level(logging.ERROR, logger="app.audit.writer"):
        await writer.close(grace_seconds=0.5)
    assert counter_value("bulkhead.audit.unwritten") == unwritten + 3
    for row in rows:
        assert f"not written before shutdown: tenant={tenant}" in caplog.text
        assert f"trace={row.trace_id}" in caplog.text
    assert "3 audit rows could not be written within the grace period" in caplog.text
