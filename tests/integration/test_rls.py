"""Postgres Row-Level Security: the runtime role sees one tenant's rows, or none.

The tenant-owned tables are read from the catalog (every table with a `tenant_id` column or
with RLS on), not from a list kept by hand: a new table is covered the day it is migrated.
"""

from __future__ import annotations

import asyncpg
import pytest

from app.db.pool import tenant_transaction
from app.tenancy.scope import TenantScope
from tests.conftest import APP_ROLE, TenantFactory

PLATFORM_TABLES = {
    "issuers": "read before the tenant is known: a token's issuer names its tenant",
    "auth_failures": "refusals often have no verified tenant; the runtime role may only INSERT",
}
"""Tables with a `tenant_id` column but no RLS, and why (migrations 0001, 0002)."""

_CATALOG = """
    SELECT c.relname AS name, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
      AND (c.relrowsecurity OR EXISTS (
            SELECT FROM pg_attribute AS a
            WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
    ORDER BY c.relname
"""


async def _catalog(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every table of the schema that holds rows of a tenant, with its RLS flags."""
    return await pool.fetch(_CATALOG)


async def _tenant_tables(pool: asyncpg.Pool) -> list[str]:
    """The tenant-owned tables: from the catalog, without the platform tables."""
    return [row["name"] for row in await _catalog(pool) if row["name"] not in PLATFORM_TABLES]


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


async def test_the_catalog_finds_every_tenant_table(owner_pool: asyncpg.Pool) -> None:
    """The query itself: the tables a hand-kept list once named, and the two it missed."""
    found = set(await _tenant_tables(owner_pool))
    assert found >= {
        "api_keys", "documents", "conversations", "messages", "audit_events", "usage",
        "tenant_keys", "secrets", "rate_counters", "token_usage_daily",
    }  # fmt: skip
    assert {row["name"] for row in await _catalog(owner_pool)} >= PLATFORM_TABLES.keys()


async def test_every_tenant_table_forces_rls_keyed_on_the_tenant_setting(
    owner_pool: asyncpg.Pool,
) -> None:
    catalog = await _catalog(owner_pool)
    unguarded = [
        row["name"]
        for row in catalog
        if row["name"] not in PLATFORM_TABLES and not (row["rls"] and row["forced"])
    ]
    assert unguarded == []
    keyed = await owner_pool.fetch(
        "SELECT DISTINCT tablename FROM pg_policies WHERE schemaname = current_schema()"
        " AND qual LIKE '%bulkhead.tenant_id%' AND with_check LIKE '%bulkhead.tenant_id%'"
    )
    assert {row["tablename"] for row in keyed} >= set(await _tenant_tables(owner_pool))


async def test_platform_tables_with_a_tenant_column_are_closed_to_the_runtime_role(
    owner_pool: asyncpg.Pool,
) -> None:
    """Without RLS, the runtime role's grants are the fence: it reads issuers, writes neither."""
    for table in PLATFORM_TABLES:
        granted = await owner_pool.fetchrow(
            "SELECT has_table_privilege($1, $2, 'SELECT') AS read,"
            " has_table_privilege($1, $2, 'UPDATE') AS update,"
            " has_table_privilege($1, $2, 'DELETE') AS delete",
            APP_ROLE,
            table,
        )
        assert (granted["read"], granted["update"], granted["delete"]) == (
            table == "issuers",
            False,
            False,
        ), table


async def test_without_a_tenant_no_row_is_visible(
    app_pool: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    await _add_document(app_pool, tenant, "doc")
    tables = await _tenant_tables(app_pool)
    async with app_pool.acquire() as connection:
        for table in tables:
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
