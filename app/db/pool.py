"""The runtime connection pool and the transaction helper that scopes every query to a tenant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

if TYPE_CHECKING:
    from app.tenancy.scope import TenantScope

# What repositories receive: a plain connection, or the pool's proxy for one.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def connect(dsn: str) -> asyncpg.Connection[asyncpg.Record]:
    """A single connection (admin CLI, LISTEN) with the same codecs as the pool."""
    connection = await asyncpg.connect(dsn)
    await _init_connection(connection)
    return connection


async def create_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """Open the asyncpg pool with JSONB decoded to Python values."""
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )


async def set_tenant(connection: Connection, tenant_id: str) -> None:
    """Arm RLS for `tenant_id` until the current transaction ends.

    `set_config(..., is_local => true)` is `SET LOCAL` with a bind parameter: the setting dies
    with the transaction, so a pooled connection never carries one tenant into another's request.
    """
    await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant_id)


@asynccontextmanager
async def tenant_transaction(
    pool: asyncpg.Pool, *, scope: TenantScope
) -> AsyncIterator[Connection]:
    """Open a transaction in which Row-Level Security sees only `scope`'s tenant.

    Yields:
        A connection inside the transaction.
    """
    async with pool.acquire() as connection, connection.transaction():
        await set_tenant(connection, scope.tenant_id)
        yield connection


@asynccontextmanager
async def platform_transaction(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A transaction with no tenant set: only platform tables (tenants, issuers) are visible.

    Yields:
        A connection inside the transaction.
    """
    async with pool.acquire() as connection, connection.transaction():
        yield connection
