"""`bulkhead tenants`: apply manifests, rotate a provider or vector key, offboard a tenant.

Operator commands: they connect as the owner role (`DATABASE_URL`, else the dev instance's
database found from `--data-dir`, see `app/db/instance.py`). Reports go to stderr; the
only thing on stdout is a new tenant's bootstrap admin API key, printed once, so
`bulkhead tenants apply tenants/acme.yaml > acme-admin.key` captures exactly the key.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
import msgspec

from app.config import Settings, get_settings
from app.db.instance import data_dir_option, instance_settings
from app.db.pool import Connection, connect
from app.identity.api_keys import ApiKeyHasher, derive_pepper
from app.secrets.admin import open_backend, read_secret_value, refuse_argv_values
from app.secrets.backend import SecretsBackend
from app.secrets.kek import MasterKeyError, load_master_key
from app.secrets.local import LocalSecretsBackend
from app.secrets.setup import data_key_wrapper
from app.tenancy.manifest import ManifestError, TenantManifest, load_manifest

if TYPE_CHECKING:
    from app.lifecycle.onboard import OnboardReport

# Each command imports what it runs (onboarding, offboarding, rotation, the Qdrant admin) in
# its body: together they are seconds of imports (the provider SDKs, qdrant-client), and
# `bulkhead tenants --help` needs none of them.


def _say(text: str) -> None:
    click.echo(text, err=True)


def _owner_url(settings: Settings) -> str:
    if not settings.db.url:
        raise click.ClickException("set DATABASE_URL (the owner role's connection)")
    return settings.db.url


@asynccontextmanager
async def _session(settings: Settings) -> AsyncIterator[tuple[Connection, SecretsBackend]]:
    connection = await connect(_owner_url(settings))
    try:
        async with open_backend(settings) as backend:
            yield connection, backend
    finally:
        await connection.close()


@click.group()
def tenants() -> None:
    """Onboard, rotate keys of, and offboard tenants."""


def _print_report(report: OnboardReport, *, dry_run: bool) -> None:
    verb = "would create" if dry_run else "create"
    if report.exists:
        verb = "would update" if dry_run else "update"
    if not report.changes:
        _say(f"{report.tenant_id}: manifest unchanged")
    else:
        _say(f"{report.tenant_id}: {verb} ({len(report.changes)} changes)")
        for change in report.changes:
            _say(f"  {change.render()}")
    if report.vectors:
        _say(f"  vectors: {report.vectors}")
    for check in report.keys:
        _say(f"  secret {check.render()}")
        if not check.present:
            _say(f"    store it: bulkhead secrets put {check.entry.secret} < key-file")


async def apply_files(
    settings: Settings, manifests: list[TenantManifest], *, dry_run: bool, verify_keys: bool
) -> bool:
    """Apply each manifest and print what changed; True if every referenced key is usable.

    Raises:
        click.ClickException: A manifest cannot be applied (nothing of it was written).
    """
    from app.lifecycle.onboard import OnboardRefused, onboard

    try:
        master = load_master_key(settings)
    except MasterKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    pepper = settings.auth.api_key_pepper
    hasher = ApiKeyHasher(pepper.encode() if pepper else derive_pepper(master))
    all_ok = True
    async with _session(settings) as (connection, backend):
        for manifest in manifests:
            try:
                report = await onboard(
                    connection,
                    manifest,
                    settings=settings,
                    backend=backend,
                    kek=data_key_wrapper(settings, master),
                    hasher=hasher,
                    dry_run=dry_run,
                    verify_keys=verify_keys,
                )
            except OnboardRefused as exc:
                _print_report(exc.report, dry_run=True)
                raise click.ClickException(str(exc)) from exc
            except ManifestError as exc:
                raise click.ClickException(str(exc)) from exc
            _print_report(report, dry_run=dry_run)
            all_ok = all_ok and report.keys_ok
            if report.bootstrap_key is not None:
                _say(
                    f"  bootstrap admin API key {report.bootstrap_key.info.id} of"
                    f" {report.tenant_id}: role admin (its API keys, usage and audit trail;"
                    " no search or chat). Shown once, on stdout next: store it now"
                )
                click.echo(report.bootstrap_key.key)
    return all_ok


@tenants.command("apply")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate, diff and check secrets; write nothing.")
@click.option(
    "--verify-keys", is_flag=True, help="Make one minimal completion with each provider key."
)
@data_dir_option
def apply(paths: tuple[Path, ...], dry_run: bool, verify_keys: bool, data_dir: Path | None) -> None:
    """Create or update tenants from manifest files (idempotent; prints a diff)."""
    try:
        manifests = [load_manifest(path) for path in paths]
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = instance_settings(data_dir)
    if not asyncio.run(apply_files(settings, manifests, dry_run=dry_run, verify_keys=verify_keys)):
        # Applied, but a key is missing or refused: make scripts notice.
        if verify_keys:
            raise click.ClickException("some provider keys are missing or failed verification")
        _say("note: some referenced secrets are missing; the chain fails over past them")


async def _manifest_of(connection: Connection, tenant: str) -> TenantManifest:
    stored = await connection.fetchval("SELECT manifest FROM tenants WHERE id = $1", tenant)
    if stored is None:
        raise click.ClickException(f"no tenant {tenant!r}")
    return msgspec.convert(stored, TenantManifest)


@tenants.command("rotate-key")
@click.argument("tenant")
@click.argument("extra", nargs=-1, required=False, metavar="")
@click.option("--provider", required=True, type=click.Choice(["openai", "anthropic"]))
@click.option("--from-env", metavar="VAR", default=None, help="Read the new key from VAR.")
@click.option(
    "--settle",
    type=float,
    default=None,
    help="Seconds to wait after the switch before retiring the old key (default: 0 with the"
    " local backend, which notifies replicas; the secret cache TTL otherwise).",
)
@data_dir_option
def rotate_key(
    tenant: str,
    extra: tuple[str, ...],
    provider: str,
    from_env: str | None,
    settle: float | None,
    data_dir: Path | None,
) -> None:
    """Replace TENANT's PROVIDER key: store, verify, switch, retire (key from stdin or env)."""
    from app.lifecycle.rotation import RotationError, rotate_provider_key

    refuse_argv_values(extra)
    value = read_secret_value(from_env)
    settings = instance_settings(data_dir)

    async def run() -> None:
        async with _session(settings) as (connection, backend):
            manifest = await _manifest_of(connection, tenant)
            wait = settle
            if wait is None:
                local = isinstance(backend, LocalSecretsBackend)
                wait = 0.0 if local else settings.secrets.cache_ttl_seconds
            await rotate_provider_key(
                backend,
                manifest,
                provider=provider,
                value=value,
                settings=settings,
                settle_seconds=wait,
                say=_say,
            )

    try:
        asyncio.run(run())
    except RotationError as exc:
        raise click.ClickException(str(exc)) from exc


@tenants.command("rotate-vector-key")
@click.argument("tenant")
@data_dir_option
def rotate_vector_key(tenant: str, data_dir: Path | None) -> None:
    """Revoke TENANT's Qdrant key at once and mint a fresh one (server mode)."""
    from app.vectors.setup import open_qdrant_admin

    if get_settings().vectors.backend != "qdrant":
        raise click.ClickException("per-tenant keys exist in server mode only (vectors.backend)")
    settings = instance_settings(data_dir)

    async def run() -> None:
        async with _session(settings) as (connection, backend):
            isolation = (await _manifest_of(connection, tenant)).retrieval.isolation
            async with open_qdrant_admin(settings, backend) as admin:
                # Revocation first: the old key stops working now, whatever happens next.
                await admin.minter.revoke(tenant)
                outcome = await admin.minter.ensure(tenant, isolation)
        if outcome.minted:
            _say(f"{tenant}: key revoked; new key stored as version {outcome.version}")
        else:
            _say(f"{tenant}: key revoked; no key minted ({outcome.reason})")

    asyncio.run(run())


@tenants.command("offboard")
@click.argument("tenant")
@click.option(
    "--export",
    "export_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New or empty directory for the export (NDJSON files, 0600).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_dir_option
def offboard_command(tenant: str, export_dir: Path, yes: bool, data_dir: Path | None) -> None:
    """Export TENANT's data, then destroy its data key and delete its vectors, rows, secrets."""
    from app.chat.crypto import ConversationCipher
    from app.lifecycle.offboard import OffboardError, offboard

    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("refusing to offboard without a terminal: pass --yes")
        click.confirm(
            f"offboard {tenant!r}: export to {export_dir}, then delete everything of it?",
            abort=True,
        )
    settings = instance_settings(data_dir)
    try:
        cipher = ConversationCipher.from_settings(settings, load_master_key(settings))
    except MasterKeyError as exc:
        raise click.ClickException(str(exc)) from exc

    async def run() -> None:
        async with _session(settings) as (connection, backend):
            report = await offboard(
                connection,
                tenant_id=tenant,
                export_dir=export_dir,
                settings=settings,
                backend=backend,
                cipher=cipher,
            )
        exported = ", ".join(f"{k} {v}" for k, v in report.exported.items())
        _say(f"{tenant}: exported to {export_dir} ({exported})")
        shredded = "destroyed" if report.data_key_destroyed else "none found"
        _say(f"{tenant}: data key {shredded} (crypto-shredding)")
        _say(f"{tenant}: secrets deleted: {', '.join(report.secrets_deleted) or 'none'}")
        _say(f"{tenant}: vectors: {report.vectors}")
        rows = ", ".join(f"{k} {v}" for k, v in report.rows_deleted.items() if v)
        _say(f"{tenant}: rows deleted: {rows}")

    try:
        asyncio.run(run())
    except OffboardError as exc:
        raise click.ClickException(str(exc)) from exc
