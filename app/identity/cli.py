"""`bulkhead keys`: the admin API's API-key operations, for operators.

Every command works inside one tenant as the runtime role, so Row-Level Security binds it exactly
as it binds the admin endpoints (an owner that is a superuser would bypass RLS), and notifies
running replicas as they do. A new key's plaintext goes to stdout, once; everything else to stderr.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from app.config import Settings
from app.db.instance import data_dir_option, instance_settings
from app.db.pool import Connection, connect, tenant_transaction
from app.db.urls import runtime_url
from app.identity import api_keys
from app.identity.service_tokens import generate_signing_key
from app.problems import ApiError
from app.secrets.kek import MasterKeyError, load_master_key
from app.tenancy.scope import TenantScope

T = TypeVar("T")


def _hasher(settings: Settings) -> api_keys.ApiKeyHasher:
    if settings.auth.api_key_pepper:
        return api_keys.ApiKeyHasher(settings.auth.api_key_pepper.encode())
    try:
        return api_keys.ApiKeyHasher(api_keys.derive_pepper(load_master_key(settings)))
    except MasterKeyError as exc:
        raise click.ClickException(str(exc)) from exc


def in_tenant(settings: Settings, tenant: str, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run `work` in one transaction of the runtime role with RLS armed for `tenant`.

    The runtime role, not the owner: many owners are superusers, which Row-Level Security does
    not bind, and operator commands must not reach past the tenant they name.
    """
    try:
        url = runtime_url(settings.db)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc

    async def run() -> T:
        connection = await connect(url)
        try:
            async with tenant_transaction(connection, scope=TenantScope.operator(tenant)):
                exists = await connection.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant)
                if not exists:
                    raise click.ClickException(f"no tenant {tenant!r}")
                return await work(connection)
        finally:
            await connection.close()

    try:
        return asyncio.run(run())
    except ApiError as exc:
        raise click.ClickException(exc.detail) from exc


def _show(info: api_keys.ApiKeyInfo) -> str:
    return json.dumps(asdict(info), default=str)


@click.group()
def keys() -> None:
    """Create, list, rotate and revoke service API keys."""


@keys.command("create")
@click.option("--tenant", required=True)
@click.option("--name", required=True)
@click.option("--scopes", required=True, help="Comma-separated roles: chat,search,ingest,admin.")
@click.option("--expires-in", type=int, default=None, help="Lifetime in seconds (default: none).")
@click.option("--cidr", "cidrs", multiple=True, help="Allowed client network (repeatable).")
@data_dir_option
def create(
    tenant: str,
    name: str,
    scopes: str,
    expires_in: int | None,
    cidrs: tuple[str, ...],
    data_dir: Path | None,
) -> None:
    """Create a key; its plaintext is printed once, on stdout."""
    settings = instance_settings(data_dir)
    hasher = _hasher(settings)
    expires = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None

    async def work(connection: Connection) -> api_keys.CreatedKey:
        return await api_keys.create_key(
            connection,
            tenant_id=tenant,
            hasher=hasher,
            name=name,
            scopes=[s.strip() for s in scopes.split(",") if s.strip()],
            created_by=f"cli:{getpass.getuser()}",
            expires_at=expires,
            allowed_cidrs=list(cidrs),
        )

    created = in_tenant(settings, tenant, work)
    click.echo(_show(created.info), err=True)
    click.echo(created.key)


@keys.command("list")
@click.option("--tenant", required=True)
@data_dir_option
def list_(tenant: str, data_dir: Path | None) -> None:
    """List a tenant's keys (never their secrets), one JSON object a line."""

    async def work(connection: Connection) -> list[api_keys.ApiKeyInfo]:
        return await api_keys.list_keys(connection, tenant_id=tenant)

    for info in in_tenant(instance_settings(data_dir), tenant, work):
        click.echo(_show(info))


@keys.command("rotate")
@click.option("--tenant", required=True)
@click.argument("key_id")
@click.option("--grace", type=int, default=3600, show_default=True, help="Seconds.")
@data_dir_option
def rotate(tenant: str, key_id: str, grace: int, data_dir: Path | None) -> None:
    """Issue a successor key; the old one works until the grace period ends."""
    settings = instance_settings(data_dir)
    hasher = _hasher(settings)

    async def work(connection: Connection) -> Any:
        return await api_keys.rotate_key(
            connection,
            tenant_id=tenant,
            hasher=hasher,
            key_id=key_id,
            grace_seconds=grace,
            created_by=f"cli:{getpass.getuser()}",
        )

    created, previous = in_tenant(settings, tenant, work)
    click.echo(_show(previous), err=True)
    click.echo(_show(created.info), err=True)
    click.echo(created.key)


@keys.command("revoke")
@click.option("--tenant", required=True)
@click.argument("key_id")
@data_dir_option
def revoke(tenant: str, key_id: str, data_dir: Path | None) -> None:
    """Revoke a key on every replica at once."""

    async def work(connection: Connection) -> None:
        await api_keys.revoke_key(connection, tenant_id=tenant, key_id=key_id)

    in_tenant(instance_settings(data_dir), tenant, work)
    click.echo(f"{key_id}: revoked", err=True)


@keys.command("signing-key")
@click.argument("path", type=click.Path(path_type=Path))
def signing_key(path: Path) -> None:
    """Generate an Ed25519 key for service tokens (BULKHEAD_AUTH__SERVICE_SIGNING_KEY_FILE)."""
    try:
        generate_signing_key(path)
    except FileExistsError as exc:
        raise click.ClickException(f"{path} exists; refusing to overwrite") from exc
    click.echo(f"wrote {path} (0600)", err=True)
