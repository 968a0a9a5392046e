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


async def _release_without_reset_query(connection: asyncpg.Connection) -> None:
    """The pool's release hook: no `RESET ALL` round trip, because nothing here needs one.

    Before this hook runs, asyncpg's pool has already rolled back a transaction left open
    (a cancelled or failed request) and dropped the connection's listener callbacks, so
    `SET LOCAL bulkhead.tenant_id` (`set_tenant`) and `pg_advisory_xact_lock` are gone with
    the transaction. asyncpg's default reset would add one more round trip per release
    (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) to undo session state that
    Bulkhead never creates on pooled connections: no session-level settings, no session
    advisory locks, no cursors held past a commit, and listeners only on dedicated
    connections. `tests/security/test_pool_reset.py` attacks the transaction-local part and keeps
    session-level state out of `app/`.
    """


async def connect(dsn: str) -> asyncpg.Connection[asyncpg.Record]:
    """A single connection (admin CLI, LISTEN) with the same codecs as the pool."""
    connection = await asyncpg.connect(dsn)
    await _init_connection(connection)
    return connection


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, connect_timeout: float = 60.0
) -> asyncpg.Pool:
    """Open the asyncpg pool with JSONB decoded to Python values.

    Released connections are not sent asyncpg's reset query (see
    `_release_without_reset_query`): that saves a round trip on every checkout. A connection
    the server dropped (a restart, a failover) is replaced on its next checkout, so the pool
    recovers by itself once Postgres is back; `connect_timeout` bounds each new connection.
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_release_without_reset_query,
        timeout=connect_timeout,
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
