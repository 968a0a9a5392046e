"""Postgres Row-Level Security: the runtime role sees one tenant's rows, or none."""

from __future__ import annotations

import asyncpg
import pytest

from app.db.pool import tenant_transaction
from app.tenancy.scope import TenantScope
from tests.conftest import APP_ROLE, TenantFactory

TENANT_TABLES = (
    "api_keys", "documents", "conversations", "messages", "audit_events", "usage",
    "tenant_keys", "secrets",
)  # fmt: skip


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="rls-test", roles=frozenset())


async def _add_document(pool: asyncpg.Pool, tenant_id: str, document_id: str) -> None:
    async with tenant_transaction(pool, scope=_scope(tenant_id)) as connection:
        await connection.execute(
            "INSERT INTO documents (tenant_id, id, title, chunk_count, content_sha256, created_by)"
            " VALUES ($1, $2, 'T', 1, 'x', 'rls-test')",
            tenant_id,
            document_id,
        )


async def test_runtime_role_owns_nothing_and_cannot_bypass_rls(owner_pool: asyncpg.Pool) -> None:
    role = await owner_pool.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", APP_ROLE
    )
    assert role is not None
    assert (role["rolsuper"], role["rolbypassrls"]) == (False, False)
    owned = await owner_pool.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = $1", APP_ROLE
    )
    assert owned == 0
    forced = await owner_pool.fetch(
        "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity"
        " AND relname = ANY($1::text[])",
        list(TENANT_TABLES),
    )
    assert {row["relname"] for row in forced} == set(TENANT_TABLES)


async def test_without_a_tenant_no_row_is_visible(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    await _add_document(app_pool, tenant, "doc")
    async with app_pool.acquire() as connection:
        for table in TENANT_TABLES:
            assert await connection.fetchval(f"SELECT count(*) FROM {table}") == 0, table  # noqa: S608


async def test_each_tenant_sees_only_its_rows(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    first, second = await make_tenant(), await make_tenant()
    await _add_document(app_pool, first, "one")
    await _add_document(app_pool, second, "two")
    for tenant, expected in ((first, ["one"]), (second, ["two"])):
        async with tenant_transaction(app_pool, scope=_scope(tenant)) as connection:
            rows = await connection.fetch("SELECT id, tenant_id FROM documents")
        assert [(r["id"], r["tenant_id"]) for r in rows] == [(expected[0], tenant)]


async def test_writing_a_row_for_another_tenant_is_rejected(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    mine, theirs = await make_tenant(), await make_tenant()
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with tenant_transaction(app_pool, scope=_scope(mine)) as connection:
            await connection.execute(
                "INSERT INTO documents (tenant_id, id, title, chunk_count, content_sha256,"
                " created_by) VALUES ($1, 'planted', 'T', 1, 'x', 'rls-test')",
                theirs,
            )
    await _add_document(app_pool, theirs, "theirs")
    async with tenant_transaction(app_pool, scope=_scope(mine)) as connection:
        moved = await connection.execute(
            "UPDATE documents SET tenant_id = $1 WHERE tenant_id = $1", theirs
        )
        deleted = await connection.execute("DELETE FROM documents WHERE id = 'theirs'")
    assert (moved, deleted) == ("UPDATE 0", "DELETE 0")


async def test_tenant_setting_does_not_outlive_its_transaction(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    async with app_pool.acquire() as connection:
        async with connection.transaction():
            await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
        leftover = await connection.fetchval("SELECT current_setting('bulkhead.tenant_id', true)")
    assert leftover in (None, "")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO tenants (id, name, manifest, manifest_sha256) VALUES ('evil', 'e', '{}', '')",
        "UPDATE tenants SET status = 'active'",
        "DELETE FROM issuers",
        "UPDATE audit_events SET status = 200",
        "DELETE FROM audit_events",
        "DELETE FROM usage",
    ],
)
async def test_runtime_role_cannot_rewrite_the_registry_or_the_trail(
    app_pool: asyncpg.Pool, statement: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await app_pool.execute(statement)
