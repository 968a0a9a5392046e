"""`bulkhead tenants apply`: plan (diff + checks), then apply a manifest, idempotently.

Order for an existing tenant: checks first (every secret ref resolves; with `verify`, every
key works), then the write, so an update can never point live traffic at a newly named
secret that is missing, or (with `verify`) at a dead key. A new tenant cannot have secrets
yet (they are stored under the tenant, after it exists): it is created first and its missing
secrets are reported with the command that stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.config import Settings
from app.db.pool import Connection, within_tenant
from app.identity import api_keys
from app.lifecycle.apply import apply_manifest
from app.lifecycle.keycheck import KeyCheck, check_keys
from app.secrets.backend import SecretsBackend
from app.secrets.wrapping import KeyWrapper
from app.tenancy.diff import Change, manifest_diff
from app.tenancy.manifest import TenantManifest
from app.tenancy.scope import TenantScope
from app.vectors.capabilities import check_isolation
from app.vectors.edge import EdgeIndex

BOOTSTRAP_KEY_NAME = "bootstrap-admin"


@dataclass(slots=True)
class OnboardReport:
    """What `onboard` found and did for one manifest.

    Attributes:
        tenant_id: The manifest's tenant.
        exists: The tenant existed before this run.
        changes: Leaf-level manifest changes (everything is `+` for a new tenant).
        written: Something was written (False for dry runs and unchanged tenants).
        keys: Secret presence / verification per chain entry.
        vectors: How the tenant's vector storage stands.
        bootstrap_key: The admin API key created with the tenant (shown once), if any.
    """

    tenant_id: str
    exists: bool
    changes: list[Change] = field(default_factory=list)
    written: bool = False
    keys: list[KeyCheck] = field(default_factory=list)
    vectors: str = ""
    bootstrap_key: api_keys.CreatedKey | None = None

    @property
    def keys_ok(self) -> bool:
        """Every referenced secret is present (and verified, when asked)."""
        return all(check.ok for check in self.keys)


class OnboardRefused(RuntimeError):
    """An update was refused before writing: a referenced secret is missing or failed."""

    def __init__(self, report: OnboardReport) -> None:
        super().__init__(f"{report.tenant_id}: not applied: a referenced secret is not usable")
        self.report = report


async def stored_manifest(connection: Connection, tenant_id: str) -> dict[str, Any] | None:
    """The manifest JSON stored for `tenant_id`, or None if it is not onboarded."""
    value: dict[str, Any] | None = await connection.fetchval(
        "SELECT manifest FROM tenants WHERE id = $1", tenant_id
    )
    return value


async def prepare_vectors(
    settings: Settings, backend: SecretsBackend, manifest: TenantManifest
) -> str:
    """Make sure the vector store is ready for a tenant, and say how it stands.

    Qdrant server mode: the tenant's collections and its scoped key (stored in `backend`,
    after the tenant's transaction committed: the local backend seals it with the tenant's
    data key). The embedded default is one Qdrant Edge shard whose `tenant_id` payload index
    (`is_tenant`) is created when the shard is opened; every tenant's points live there,
    scoped by the forced tenant filter. A running service holds the shard's lock, and has then
    already created it.
    """
    if settings.vectors.backend == "qdrant":
        # Imported here: qdrant-client is a second of imports the embedded default never needs.
        from app.vectors.setup import provision_server_tenant

        return await provision_server_tenant(settings, backend, manifest)
    try:
        index = EdgeIndex.open(settings.vector_path, search_threads=1)
    except Exception as exc:  # the engine raises a bare Exception for a held WAL lock
        if "WouldBlock" not in str(exc):
            raise
        return f"Qdrant Edge shard {settings.vector_path} is open in the running service (ready)"
    await index.close()
    return f"Qdrant Edge shard {settings.vector_path} ready (tenant payload index in place)"


async def onboard(
    connection: Connection,
    manifest: TenantManifest,
    *,
    settings: Settings,
    backend: SecretsBackend,
    kek: bytes | KeyWrapper,
    hasher: api_keys.ApiKeyHasher,
    dry_run: bool = False,
    verify_keys: bool = False,
) -> OnboardReport:
    """Plan and (unless `dry_run`) apply one manifest.

    Raises:
        OnboardRefused: An existing tenant's update names a secret that is missing or fails
            verification; nothing was written.
        ManifestError: The issuer mapping collides with another tenant's, or the manifest asks
            for what the vector backend cannot do (checked in dry runs too).
    """
    check_isolation(settings, manifest)
    old = await stored_manifest(connection, manifest.id)
    report = OnboardReport(tenant_id=manifest.id, exists=old is not None)
    report.changes = manifest_diff(old or {}, manifest.to_json())
    if old is not None:
        report.keys = await check_keys(backend, manifest, verify=verify_keys, settings=settings.llm)
        known = {entry.get("secret") for entry in old.get("llm", {}).get("chain", [])}
        # A ref this update introduces must work before traffic is pointed at it; a ref that
        # was already missing is reported, but does not block unrelated changes.
        blocking = [
            check
            for check in report.keys
            if not check.ok and (verify_keys or check.entry.secret not in known)
        ]
        if blocking and report.changes:
            raise OnboardRefused(report)
    if dry_run:
        return report
    async with connection.transaction():
        result = await apply_manifest(connection, manifest, kek=kek)
        report.written = not result.unchanged
        if result.created:
            # In the tenant's own transaction: a failed key creation leaves no half tenant.
            operator = TenantScope.operator(manifest.id)
            async with within_tenant(connection, scope=operator):
                report.bootstrap_key = await api_keys.create_key(
                    connection,
                    tenant_id=manifest.id,
                    hasher=hasher,
                    name=BOOTSTRAP_KEY_NAME,
                    scopes=["admin"],
                    created_by=operator.subject,
                )
    if old is None:
        report.keys = await check_keys(backend, manifest, verify=verify_keys, settings=settings.llm)
    report.vectors = await prepare_vectors(settings, backend, manifest)
    return report
