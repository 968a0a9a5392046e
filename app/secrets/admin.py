"""`bulkhead secrets ...`: put, rotate, list, delete values and rotate the KEK.

Values come from stdin or a named environment variable, never from argv (where `ps`, shell
history and audit logs of process starts would keep them).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import click

from app.config import Settings, get_settings
from app.db.instance import data_dir_option, instance_settings
from app.db.pool import connect, create_pool
from app.db.urls import runtime_url
from app.secrets.backend import SecretNotFound, SecretsBackend, SecretsReadOnly
from app.secrets.kek import MasterKeyError, load_master_key, load_previous_master_keys
from app.secrets.local import KekRotation, rotate_kek
from app.secrets.setup import build_backend, data_key_wrapper
from app.secrets.values import SecretAccessDenied, SecretRef, SecretValue
from app.secrets.wrapping import KeyWrapper, TransitKeyWrapper
from app.tenancy.scope import PLATFORM_TENANT, TenantScope

_T = TypeVar("_T")


def _ref(text: str) -> SecretRef:
    try:
        return SecretRef.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _admin_scope(ref: SecretRef) -> tuple[TenantScope, frozenset[str]]:
    # A platform ref belongs to no tenant: its scope names none (`PLATFORM_TENANT`).
    scope = TenantScope.operator(ref.tenant_id or PLATFORM_TENANT)
    return scope, frozenset({str(ref)}) if ref.tenant_id is None else frozenset()


def read_secret_value(from_env: str | None) -> SecretValue:
    """A secret value from the environment variable `from_env`, else stdin (never argv).

    Raises:
        click.ClickException: The variable is unset or the value is empty.
    """
    if from_env:
        text = os.environ.get(from_env, "")
        if not text:
            raise click.ClickException(f"environment variable {from_env} is unset or empty")
    elif sys.stdin.isatty():
        text = getpass.getpass("secret value (not echoed): ")
    else:
        text = sys.stdin.read()
        # One trailing newline is what `echo` and heredocs add; keep any other whitespace.
        text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise click.ClickException("empty secret value: pipe it on stdin or use --from-env VAR")
    return SecretValue(text)


@asynccontextmanager
async def open_backend(settings: Settings) -> AsyncIterator[SecretsBackend]:
    """The configured backend for admin commands (runtime-role pool for the local one).

    Yields:
        The open backend; closed (with its pool) on exit.
    """
    kek = None
    if settings.secrets.backend == "local":
        # Only the local store encrypts with the master key; Vault and AWS hold their own.
        try:
            kek = load_master_key(settings)
        except MasterKeyError as exc:
            raise click.ClickException(str(exc)) from exc
    has_db = bool(settings.db.url or settings.db.app_url)
    if settings.secrets.backend == "local" and not has_db:
        raise click.ClickException("set DATABASE_URL: the local backend keeps secrets in Postgres")
    pool = await create_pool(runtime_url(settings.db), min_size=1, max_size=2) if has_db else None
    try:
        backend = build_backend(settings, pool=pool, kek=kek)
        try:
            yield backend
        finally:
            await backend.close()
    finally:
        if pool is not None:
            await pool.close()


def _instance(data_dir: Path | None) -> Settings:
    """The instance's settings; a database only for the local backend, which keeps secrets in it."""
    return instance_settings(data_dir, database=get_settings().secrets.backend == "local")


def _run(data_dir: Path | None, action: Callable[[SecretsBackend], Awaitable[_T]]) -> _T:
    settings = _instance(data_dir)

    async def main() -> _T:
        async with open_backend(settings) as backend:
            try:
                return await action(backend)
            except (SecretAccessDenied, SecretNotFound, SecretsReadOnly, LookupError) as exc:
                raise click.ClickException(str(exc)) from exc

    return asyncio.run(main())


@click.group()
def secrets() -> None:
    """Store, rotate, list and delete secrets; rotate the key-encryption key."""


def refuse_argv_values(extra: tuple[str, ...]) -> None:
    """Refuse a value given as a command-line argument, without echoing it.

    Raises:
        click.UsageError: `extra` is not empty.
    """
    # Click would echo an unexpected argument back ("Got unexpected extra argument (sk-...)").
    if extra:
        raise click.UsageError(
            "secret values are read from stdin or --from-env VAR, never from arguments"
            " (the value given was not echoed; clear it from your shell history)"
        )


_EXTRA = click.argument("extra", nargs=-1, required=False, metavar="")

_FROM_ENV = click.option(
    "--from-env",
    metavar="VAR",
    default=None,
    help="Read the value from this environment variable (default: stdin).",
)


@secrets.command("put")
@click.argument("ref")
@_EXTRA
@_FROM_ENV
@data_dir_option
def put(ref: str, extra: tuple[str, ...], from_env: str | None, data_dir: Path | None) -> None:
    """Store a new version of REF (tenants/<id>/<name>); value from stdin or --from-env."""
    refuse_argv_values(extra)
    parsed = _ref(ref)
    value = read_secret_value(from_env)
    scope, platform = _admin_scope(parsed)
    version = _run(data_dir, lambda b: b.put(parsed, value, scope=scope, platform_refs=platform))
    click.echo(f"{parsed}: stored version {version}")


@secrets.command("rotate")
@click.argument("ref")
@_EXTRA
@_FROM_ENV
@data_dir_option
def rotate(ref: str, extra: tuple[str, ...], from_env: str | None, data_dir: Path | None) -> None:
    """Replace an existing REF with a new version; replicas serve it within the cache TTL."""
    refuse_argv_values(extra)
    parsed = _ref(ref)
    value = read_secret_value(from_env)
    scope, platform = _admin_scope(parsed)

    async def action(backend: SecretsBackend) -> int:
        await backend.get(parsed, scope=scope, platform_refs=platform)  # must exist
        return await backend.put(parsed, value, scope=scope, platform_refs=platform)

    click.echo(f"{parsed}: rotated to version {_run(data_dir, action)}")


@secrets.command("list")
@click.argument("tenant")
@data_dir_option
def list_(tenant: str, data_dir: Path | None) -> None:
    """List TENANT's refs and their latest versions (never values)."""
    scope, _ = _admin_scope(_ref(f"tenants/{tenant}/x"))
    for ref, version in _run(data_dir, lambda b: b.list(scope=scope)):
        click.echo(f"{ref}\tv{version}")


@secrets.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_dir_option
def delete(ref: str, yes: bool, data_dir: Path | None) -> None:
    """Delete every version of REF."""
    parsed = _ref(ref)
    if not yes:
        click.confirm(f"delete every version of {parsed}?", abort=True)
    scope, platform = _admin_scope(parsed)
    deleted = _run(data_dir, lambda b: b.delete(parsed, scope=scope, platform_refs=platform))
    click.echo(f"{parsed}: {'deleted' if deleted else 'nothing stored'}")


@secrets.command("rotate-kek")
@data_dir_option
def rotate_kek_command(data_dir: Path | None) -> None:
    """Rewrap every tenant data key under the current master key.

    Zero-downtime procedure: 1) restart replicas with the new key as
    BULKHEAD_SECRETS__MASTER_KEY and the old one in BULKHEAD_SECRETS__PREVIOUS_MASTER_KEYS
    (a JSON list); 2) run this; 3) drop the previous keys and restart.
    """
    settings = instance_settings(data_dir)
    if not settings.db.url:
        raise click.ClickException("set DATABASE_URL (the owner role's connection)")
    try:
        master = load_master_key(settings)
        previous: list[bytes | KeyWrapper] = list(load_previous_master_keys(settings))
        target = data_key_wrapper(settings, master)
    except (MasterKeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not isinstance(target, bytes):
        # Moving to Vault Transit: keys wrapped by the master key are the ones to rewrap.
        previous.append(master)
    if not previous:
        raise click.ClickException(
            "no previous master keys: set"
            " BULKHEAD_SECRETS__PREVIOUS_MASTER_KEYS='[\"<old base64>\"]'"
        )

    async def main() -> KekRotation:
        assert settings.db.url is not None  # noqa: S101 - checked above
        connection = await connect(settings.db.url)
        try:
            return await rotate_kek(connection, kek=target, previous_keks=previous)
        finally:
            await connection.close()
            if isinstance(target, TransitKeyWrapper):
                await target.close()

    result = asyncio.run(main())
    click.echo(
        f"rewrapped {len(result.rewrapped)} tenant data keys under the current master key"
        f" ({len(result.unchanged)} already current)"
    )
    if result.failed:
        raise click.ClickException(
            f"{len(result.failed)} tenants could not be rewrapped (their KEK is not among the"
            f" previous master keys): {', '.join(result.failed)}"
        )
