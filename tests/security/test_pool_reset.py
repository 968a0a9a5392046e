"""A pooled connection never carries one request's tenant into the next checkout.

The pool skips asyncpg's reset query on release (`app/db/pool.py`): these tests attack that.
A pool of one connection makes every checkout reuse the same backend, which each test checks
by its pid, so "no tenant" below is the state the next request would inherit.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.db.pool import create_pool, platform_transaction, tenant_transaction
from app.db.urls import with_user
from app.tenancy.scope import TenantScope
from tests.conftest import APP_ROLE, TenantFactory

APP_DIR = Path(__file__).resolve().parents[2] / "app"
_SETTING = "SELECT current_setting('bulkhead.tenant_id', true)"


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(with_user(database_url, APP_ROLE), min_size=1, max_size=1)
    yield pool
    await pool.close()


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="u", roles=frozenset())


async def _next_checkout(pool: asyncpg.Pool) -> tuple[int, str | None, int]:
    """(backend pid, tenant setting, tenant_keys rows visible) on the next checkout."""
    async with pool.acquire() as connection:
        assert not connection.is_in_transaction()
        pid = await connection.fetchval("SELECT pg_backend_pid()")
        setting = await connection.fetchval(_SETTING)
        visible = await connection.fetchval("SELECT count(*) FROM tenant_keys")
    return pid, setting, visible


async def _armed_pid(pool: asyncpg.Pool, tenant_id: str) -> int:
    """The backend pid, after checking RLS sees the tenant's key row inside its transaction."""
    async with tenant_transaction(pool, scope=_scope(tenant_id)) as connection:
        assert await connection.fetchval(_SETTING) == tenant_id
        assert await connection.fetchval("SELECT count(*) FROM tenant_keys") == 1
        pid: int = await connection.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_committed_transaction_leaves_no_tenant(
    one_connection: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant_id = await make_tenant("reset")
    pid = await _armed_pid(one_connection, tenant_id)
    assert await _next_checkout(one_connection) in ((pid, "", 0), (pid, None, 0))


async def test_failed_transaction_leaves_no_tenant(
    one_connection: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant_id = await make_tenant("reset")
    pid = await _armed_pid(one_connection, tenant_id)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with tenant_transaction(one_connection, scope=_scope(tenant_id)) as connection:
            await connection.execute("SELECT 1 / 0")
    assert await _next_checkout(one_connection) in ((pid, "", 0), (pid, None, 0))


async def test_cancelled_request_leaves_no_tenant(
    one_connection: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    """A request cancelled mid-query (client gone, deadline) is released mid-transaction."""
    tenant_id = await make_tenant("reset")
    pid = await _armed_pid(one_connection, tenant_id)
    armed = asyncio.Event()

    async def slow_request() -> None:
        async with tenant_transaction(one_connection, scope=_scope(tenant_id)) as connection:
            armed.set()
            await connection.execute("SELECT pg_sleep(10)")

    task = asyncio.create_task(slow_request())
    await asyncio.wait_for(armed.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    checkout = await asyncio.wait_for(_next_checkout(one_connection), 10)
    # asyncpg may replace a connection it could not cancel cleanly: then the pid differs,
    # which is just as safe. Either way no tenant is set and no row is visible.
    assert checkout[1:] in (("", 0), (None, 0))
    if checkout[0] != pid:
        pytest.fail("the cancelled connection was replaced; the test did not attack reuse")


async def test_platform_transaction_after_tenant_sees_no_tenant_rows(
    one_connection: asyncpg.Pool, make_tenant: TenantFactory
) -> None:
    tenant_id = await make_tenant("reset")
    await _armed_pid(one_connection, tenant_id)
    async with platform_transaction(one_connection) as connection:
        assert await connection.fetchval(_SETTING) in ("", None)
        assert await connection.fetchval("SELECT count(*) FROM tenant_keys") == 0


# Session state the skipped reset query would have cleared; none of it may appear in app/.
_SESSION_STATE = re.compile(
    r"set_config\([^)]*,\s*(false|\$\d+)\s*\)"  # session-level (or caller-chosen) set_config
    r"|\bSET\s+(SESSION\s+)?(ROLE|bulkhead\.|search_path|statement_timeout)"
    r"|pg_(try_)?advisory_lock(_shared)?\("  # session advisory locks (xact ones are fine)
    r"|WITH\s+HOLD"
    r"""|(?-i:(?<!["'])["']LISTEN\s)""",  # a LISTEN statement (add_listener: dedicated connections)
    re.IGNORECASE,
)


def test_app_creates_no_session_state_on_pooled_connections() -> None:
    offenders = [
        f"{path.relative_to(APP_DIR.parent)}: {match[0]}"
        for path in sorted(APP_DIR.rglob("*.py"))
        for match in _SESSION_STATE.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_session_state_pattern_catches_what_it_must() -> None:
    """The guard above is only as good as its pattern: check it on known offenders."""
    for offender in (
        "SELECT set_config('bulkhead.tenant_id', $1, false)",
        "SET bulkhead.tenant_id = 'x'",
        "SET SESSION ROLE bulkhead_owner",
        "SELECT pg_advisory_lock(1, 2)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "'LISTEN bulkhead_changes'",
    ):
        assert _SESSION_STATE.search(offender), offender
    for allowed in (
        "SELECT set_config('bulkhead.tenant_id', $1, true)",
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        "UPDATE tenants SET name = $1",
    ):
        assert not _SESSION_STATE.search(allowed), allowed
