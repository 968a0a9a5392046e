"""`bulkhead audit verify --tenant X`: check a tenant's audit hash chain (owner role).

Exit status 0 when the chain is intact, 1 at the first broken position (printed with the row
id and the reason), so it fits a cron job or a CI check.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from app.audit.chain import Verification, verify
from app.db.instance import data_dir_option, instance_settings
from app.db.pool import connect, tenant_transaction
from app.tenancy.scope import TenantScope


@click.group()
def audit() -> None:
    """Audit trail operations (as the owner role)."""


@audit.command("verify")
@click.option("--tenant", required=True, help="Tenant id.")
@data_dir_option
def verify_command(tenant: str, data_dir: Path | None) -> None:
    """Verify TENANT's audit hash chain; exit 1 at the first modified, missing or moved row."""
    settings = instance_settings(data_dir)
    if not settings.db.url:
        raise click.ClickException("set DATABASE_URL (the owner role's connection)")
    result = asyncio.run(_verify(settings.db.url, tenant))
    if result is None:
        raise click.ClickException(f"no tenant {tenant!r}")
    legacy = f" ({result.legacy_rows} rows predate the chain)" if result.legacy_rows else ""
    if result.broken is None:
        click.echo(f"{tenant}: {result.rows} rows verified, head {result.head.hex()}{legacy}")
        return
    broken = result.broken
    click.echo(
        f"{tenant}: chain broken at position {broken.position} (row id {broken.row_id}):"
        f" {broken.reason}; {result.rows} rows verified before it{legacy}",
        err=True,
    )
    raise SystemExit(1)


async def _verify(url: str, tenant: str) -> Verification | None:
    connection = await connect(url)
    try:
        async with tenant_transaction(
            connection,
            scope=TenantScope.operator(tenant),
            isolation="repeatable_read",
            readonly=True,
        ):
            if not await connection.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant):
                return None
            return await verify(connection, tenant)
    finally:
        await connection.close()
