"""The runtime connection pool, and the one door to tenant data: `tenant_transaction`.

Row-Level Security reads the tenant from the transaction-local setting `bulkhead.tenant_id`.
Only this module sets it, and only from a `TenantScope`: a request's (from its verified
credential), an operator command's (`TenantScope.operator`) or a job's of the service itself
(`TenantScope.system`). A bare tenant id string never arms RLS.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

if TYPE_CHECKING:
    from app.tenancy.scope import TenantScope

# What repositories receive: a plain connection, or the pool's proxy for one.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
Isolation: TypeAlias = Literal["serializable", "repeatable_read", "read_committed"]


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _release_without_reset_query(connection: asyncpg.Connection) -> None:
    """The pool's release hook: no `RESET ALL` round trip, because nothing here needs one.

    Before this hook runs, asyncpg's pool has already rolled back a transaction left open
    (a cancelled or failed request) and dropped the connection's listener callbacks, so
    `SET LOCAL bulkhead.tenant_id` (`tenant_transaction`) and `pg_advisory_xact_lock` are gone with
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


async def _arm(connection: Connection, tenant_id: str) -> None:
    """Arm RLS for `tenant_id` until the current transaction ends.

    `set_config(..., is_local => true)` is `SET LOCAL` with a bind parameter: the setting dies
    with the transaction, so a pooled connection never carries one tenant into another's request.
    """
    await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant_id)


@asynccontextmanager
async def tenant_transaction(
    target: asyncpg.Pool | Connection,
    *,
    scope: TenantScope,
    isolation: Isolation | None = None,
    readonly: bool = False,
) -> AsyncIterator[Connection]:
    """Open a transaction in which Row-Level Security sees only `scope`'s tenant.

    `target` is the pool (a connection is acquired for the transaction) or a connection the
    caller holds (an operator command's, or one a job reuses across tenants).

    Yields:
        A connection inside the transaction.
    """
    if isinstance(target, asyncpg.Pool):
        async with (
            target.acquire() as connection,
            connection.transaction(isolation=isolation, readonly=readonly),
        ):
            await _arm(connection, scope.tenant_id)
            yield connection
    else:
        async with target.transaction(isolation=isolation, readonly=readonly):
            await _arm(target, scope.tenant_id)
            yield target


@asynccontextmanager
async def within_tenant(connection: Connection, *, scope: TenantScope) -> AsyncIterator[Connection]:
    """Inside the connection's open transaction, arm RLS for `scope`'s tenant for the block.

    For the one step of a platform transaction that writes a tenant's own rows (onboarding
    stores the new tenant's data key and first API key in the transaction that registers it).
    When the block ends the tenant armed before it (usually none) is armed again; after an
    error the transaction is lost anyway, and the setting with it.

    Yields:
        The same connection, armed for `scope`'s tenant.
    """
    previous = await connection.fetchval("SELECT current_setting('bulkhead.tenant_id', true)")
    await _arm(connection, scope.tenant_id)
    yield connection
    await _arm(connection, previous or "")


@asynccontextmanager
async def platform_transaction(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A transaction with no tenant set: only platform tables (tenants, issuers) are visible.

    Yields:
        A connection inside the transaction.
    """
    async with pool.acquire() as connection, connection.transaction():
        yield connection
