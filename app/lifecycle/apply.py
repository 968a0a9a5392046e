"""Onboarding: apply a manifest to the registry (idempotent, transactional, announced by NOTIFY).

Runs as the owner role: the runtime role cannot write the tenant registry at all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal, Protocol

from app.db.pool import Connection
from app.db.registry import CHANNEL
from app.secrets.local import ensure_tenant_key
from app.secrets.wrapping import KeyWrapper
from app.tenancy.manifest import ManifestError, TenantManifest


class KeyOutcome(Protocol):
    """Whether provisioning minted a new vector-store key."""

    @property
    def minted(self) -> bool:
        """A new key was minted and stored."""
        ...


class VectorProvisioning(Protocol):
    """Creates a tenant's vector collections and scoped key (Qdrant server mode)."""

    async def ensure(self, tenant_id: str, isolation: Literal["shared", "dedicated"]) -> KeyOutcome:
        """Make the tenant's collections exist and its stored key valid; idempotent."""
        ...


@dataclass(slots=True)
class ApplyResult:
    """What `apply_manifest` changed."""

    tenant_id: str
    created: bool = False
    changed: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        """Nothing was written."""
        return not self.created and not self.changed


def _check_issuers(manifest: TenantManifest) -> None:
    seen: set[tuple[str, str | None]] = set()
    for issuer in manifest.identity.issuers:
        key = (issuer.issuer, issuer.tenant_claim_value)
        if key in seen:
            raise ManifestError(
                f"{manifest.id}: identity.issuers: {issuer.issuer!r} is listed twice with the"
                " same tenant claim value"
            )
        seen.add(key)
    for cidr in manifest.network.allowed_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ManifestError(f"{manifest.id}: network.allowed_cidrs: {exc}") from exc


async def apply_manifest(
    connection: Connection,
    manifest: TenantManifest,
    *,
    kek: bytes | KeyWrapper,
    vectors: VectorProvisioning | None = None,
) -> ApplyResult:
    """Create or update a tenant, its issuers, its data key and (server mode) its vector key.

    The vector collections and the tenant's scoped Qdrant key are provisioned after the
    registry transaction commits (the key is stored under the tenant's data key, which must
    exist first); a failure there leaves the tenant applied, and the next `apply` or the
    service's re-mint loop completes it.

    Raises:
        ManifestError: The manifest's issuer mapping collides with another tenant's.
        SecretsBackendUnavailable: The key could not be stored.
    """
    _check_issuers(manifest)
    result = ApplyResult(tenant_id=manifest.id)
    async with connection.transaction():
        current = await connection.fetchrow(
            "SELECT name, manifest_sha256, manifest->'retrieval'->>'embedder' AS embedder"
            " FROM tenants WHERE id = $1 FOR UPDATE",
            manifest.id,
        )
        digest = manifest.sha256()
        if current is None:
            result.created = True
            await connection.execute(
                "INSERT INTO tenants (id, name, manifest, manifest_sha256) VALUES ($1, $2, $3, $4)",
                manifest.id,
                manifest.name,
                manifest.to_json(),
                digest,
            )
        elif current["manifest_sha256"] != digest:
            _check_embedder_unchanged(manifest, current["embedder"] or "bm25")
            result.changed.append("manifest")
            await connection.execute(
                "UPDATE tenants SET name = $2, manifest = $3, manifest_sha256 = $4,"
                " updated_at = now() WHERE id = $1",
                manifest.id,
                manifest.name,
                manifest.to_json(),
                digest,
            )
        if result.created or result.changed:
            await _replace_issuers(connection, manifest)
        if await ensure_tenant_key(connection, tenant_id=manifest.id, kek=kek):
            result.changed.append("data key")
        if not result.unchanged:
            await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, manifest.id)
    if vectors is not None:
        outcome = await vectors.ensure(manifest.id, manifest.retrieval.isolation)
        if outcome.minted:
            result.changed.append("vector key")
    return result


def _check_embedder_unchanged(manifest: TenantManifest, current: str) -> None:
    # Stored vectors were made by the current embedder: a manifest edit alone would leave
    # search comparing new query vectors with old chunk vectors.
    if manifest.retrieval.embedder != current:
        raise ManifestError(
            f"{manifest.id}: retrieval.embedder is {current!r} and is fixed at onboarding;"
            f" change it with `bulkhead reindex --tenant {manifest.id}"
            f" --embedder {manifest.retrieval.embedder}`"
        )


async def _replace_issuers(connection: Connection, manifest: TenantManifest) -> None:
    await connection.execute("DELETE FROM issuers WHERE tenant_id = $1", manifest.id)
    for issuer in manifest.identity.issuers:
        clash = await connection.fetchval(
            "SELECT tenant_id FROM issuers WHERE issuer = $1"
            " AND (tenant_claim_value IS NOT DISTINCT FROM $2 OR tenant_claim IS NULL OR $3)",
            issuer.issuer,
            issuer.tenant_claim_value,
            issuer.tenant_claim is None,
        )
        if clash is not None:
            raise ManifestError(
                f"{manifest.id}: identity.issuers: {issuer.issuer!r} already maps to tenant"
                f" {clash!r}; a shared issuer needs tenant_claim/tenant_claim_value on every"
                " tenant that uses it, with distinct values"
            )
        await connection.execute(
            """
            INSERT INTO issuers (tenant_id, issuer, audience, jwks_uri, tenant_claim,
                                 tenant_claim_value, roles_claim, groups_claim)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            manifest.id,
            issuer.issuer,
            issuer.audience,
            issuer.jwks_uri,
            issuer.tenant_claim,
            issuer.tenant_claim_value,
            issuer.roles_claim,
            issuer.groups_claim,
        )
