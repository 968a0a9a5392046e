"""The audit trail is append-only and hash-chained per tenant.

Rows are written by the real `AuditWriter` (two of them on separate pools stand in for two
replicas); tampering is done as the table owner, the only role that can; `bulkhead audit
verify` must then exit 1 naming the first broken position.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from click.testing import CliRunner, Result
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.audit.chain import GENESIS, link
from app.audit.writer import AuditRow, AuditWriter
from app.cli import main
from app.config import Settings, get_settings
from app.db.pool import create_pool, tenant_transaction
from app.db.urls import with_user
from app.tenancy.scope import Role, TenantScope
from tests.conftest import APP_ROLE, AuthHeaders, TenantFactory

Client = AsyncTestClient[Litestar]


def _row(tenant_id: str, n: int, *, at: datetime | None = None) -> AuditRow:
    return AuditRow(
        tenant_id=tenant_id,
        occurred_at=at or datetime.now(UTC),
        principal=f"user-{n}",
        credential_id="jwt:test",
        method="POST",
        route="/v1/chat",
        status=200,
        latency_ms=1.234567 + n,
        source_ip="2001:db8::1" if n % 2 else "10.0.0.7",
        trace_id=f"{n:032x}",
    )


async def _write(pool: asyncpg.Pool, rows: list[AuditRow], batch_size: int = 5) -> None:
    writer = AuditWriter(pool, buffer_size=1000, batch_size=batch_size, flush_interval=0.01)
    writer.start()
    for row in rows:
        await writer.record(row)
    await writer.close()


def _scope(tenant: str) -> TenantScope:
    return TenantScope(tenant_id=tenant, subject="auditor", roles=frozenset())


async def _owner(database_url: str, tenant: str, *statements: str) -> None:
    """Run `statements` as the table owner, inside the tenant (RLS is forced on owners too)."""
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
            for statement in statements:
                await connection.execute(statement)
    finally:
        await connection.close()


async def _verify_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, tenant: str) -> Result:
    assert settings.db.url is not None
    monkeypatch.setenv("DATABASE_URL", settings.db.url)
    get_settings.cache_clear()
    try:
        return await asyncio.to_thread(
            CliRunner().invoke, main, ["audit", "verify", "--tenant", tenant]
        )
    finally:
        get_settings.cache_clear()


async def test_rows_link_into_one_chain(
    app_pool: asyncpg.Pool,
    make_tenant: TenantFactory,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = await make_tenant("chain")
    await _write(app_pool, [_row(tenant, n) for n in range(12)])
    async with tenant_transaction(app_pool, scope=_scope(tenant)) as connection:
        rows = await connection.fetch("SELECT * FROM audit_events ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 13))
    prev = GENESIS
    for row in rows:
        assert row["prev_hash"] == prev
        assert row["row_hash"] == link(prev, dict(row))
        prev = row["row_hash"]
    result = await _verify_cli(settings, monkeypatch, tenant)
    assert result.exit_code == 0, result.output
    assert f"12 rows verified, head {prev.hex()}" in result.output


async def test_two_replicas_writing_at_once_never_fork_the_chain(
    app_pool: asyncpg.Pool,
    database_url: str,
    make_tenant: TenantFactory,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = await make_tenant("chain")
    other_pool = await create_pool(with_user(database_url, APP_ROLE), min_size=1, max_size=2)
    try:
        await asyncio.gather(
            _write(app_pool, [_row(tenant, n) for n in range(60)], batch_size=3),
            _write(other_pool, [_row(tenant, n) for n in range(60, 120)], batch_size=4),
        )
    finally:
        await other_pool.close()
    async with tenant_transaction(app_pool, scope=_scope(tenant)) as connection:
        seqs = await connection.fetch("SELECT seq FROM audit_events ORDER BY seq")
    assert [r["seq"] for r in seqs] == list(range(1, 121))
    result = await _verify_cli(settings, monkeypatch, tenant)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("tamper", "position", "reason"),
    [
        ("UPDATE audit_events SET status = 500 WHERE seq = 4", 4, "row content changed"),
        ("UPDATE audit_events SET principal = 'mallory' WHERE seq = 7", 7, "content changed"),
        ("DELETE FROM audit_events WHERE seq = 5", 5, "row missing"),
        # Reorder: rows 3 and 6 trade places (through a free seq, the index is unique).
        (
            "UPDATE audit_events SET seq = -3 WHERE seq = 3;"
            "UPDATE audit_events SET seq = 3 WHERE seq = 6;"
            "UPDATE audit_events SET seq = 6 WHERE seq = -3",
            3,
            "prev_hash does not link",
        ),
        ("UPDATE audit_events SET seq = NULL WHERE seq = 8", 8, "row missing"),
    ],
)
async def test_verify_finds_the_first_tampered_row(
    app_pool: asyncpg.Pool,
    database_url: str,
    make_tenant: TenantFactory,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tamper: str,
    position: int,
    reason: str,
) -> None:
    tenant = await make_tenant("chain")
    await _write(app_pool, [_row(tenant, n) for n in range(10)])
    assert (await _verify_cli(settings, monkeypatch, tenant)).exit_code == 0
    await _owner(database_url, tenant, *tamper.split(";"))
    result = await _verify_cli(settings, monkeypatch, tenant)
    assert result.exit_code == 1
    assert f"chain broken at position {position} " in result.output
    assert reason in result.output
    assert f"{position - 1} rows verified before it" in result.output


async def test_verify_unknown_tenant_fails(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await _verify_cli(settings, monkeypatch, "no-such-tenant")
    assert result.exit_code != 0
    assert "no tenant 'no-such-tenant'" in result.output


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET status = 200",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "UPDATE audit_events SET row_hash = NULL",
    ],
)
async def test_app_role_cannot_change_or_remove_audit_rows(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory, statement: str
) -> None:
    tenant = await make_tenant("chain")
    await _write(app_pool, [_row(tenant, 1)])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        async with tenant_transaction(app_pool, scope=_scope(tenant)) as connection:
            await connection.execute(statement)
    async with tenant_transaction(app_pool, scope=_scope(tenant)) as connection:
        assert await connection.fetchval("SELECT count(*) FROM audit_events") == 1


async def test_export_streams_own_tenant_ndjson_in_chain_order(
    client: Client,
    app: Litestar,
    app_pool: asyncpg.Pool,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
) -> None:
    tenant, other = tenant_pair
    start = datetime(2026, 1, 1, tzinfo=UTC)
    await _write(app_pool, [_row(tenant, n, at=start + timedelta(hours=n)) for n in range(6)])
    await _write(app_pool, [_row(other, n, at=start) for n in range(3)])
    admin = auth(tenant, roles=(Role.ADMIN,))
    response = await client.get(
        "/v1/admin/audit", params={"until": "2026-01-02T00:00:00Z"}, headers=admin
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert {line["principal"] for line in lines} == {f"user-{n}" for n in range(6)}
    # The export re-verifies offline: each line's hash from its own fields.
    prev = GENESIS
    for line in lines:
        values = line | {
            "tenant_id": tenant,
            "occurred_at": datetime.fromisoformat(line["occurred_at"]),
        }
        assert line["prev_hash"] == prev.hex()
        prev = link(prev, values)
        assert line["row_hash"] == prev.hex()

    ranged = await client.get(
        "/v1/admin/audit",
        params={"since": "2026-01-01T02:00:00Z", "until": "2026-01-01T04:00:00Z"},
        headers=admin,
    )
    assert [json.loads(x)["seq"] for x in ranged.text.splitlines()] == [3, 4]
    limited = await client.get(
        "/v1/admin/audit", params={"limit": 2, "until": "2026-01-02T00:00:00"}, headers=admin
    )
    assert [json.loads(x)["seq"] for x in limited.text.splitlines()] == [1, 2]


@pytest.mark.parametrize(
    ("params", "roles", "status", "code"),
    [
        ({}, (Role.CHAT, Role.SEARCH), 403, "forbidden"),
        ({"limit": 0}, (Role.ADMIN,), 422, "validation_error"),
        ({"limit": 100_001}, (Role.ADMIN,), 422, "validation_error"),
        ({"since": "yesterday"}, (Role.ADMIN,), 422, "validation_error"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, (Role.ADMIN,), 422,
         "validation_error"),
        ({"tenant_id": "x"}, (Role.ADMIN,), 422, "validation_error"),
    ],
)  # fmt: skip
async def test_export_refusals(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    params: dict[str, object],
    roles: tuple[Role, ...],
    status: int,
    code: str,
) -> None:
    response = await client.get(
        "/v1/admin/audit", params=params, headers=auth(tenant_pair[0], roles=roles)
    )
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
