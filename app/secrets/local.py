"""The default backend: secrets in Postgres, envelope-encrypted per tenant (docs/secrets.md).

A tenant's 32-byte data key (DEK) is stored in `tenant_keys`, wrapped by the KEK (the master
key, AES-GCM; or a Vault Transit key, see `wrapping.py`).
Secrets are AES-GCM-encrypted with the DEK. Every ciphertext is bound by its associated data
to where it lives (tenant, ref, version), so a row copied elsewhere fails to decrypt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.db.pool import Connection, connect, tenant_transaction, within_tenant
from app.secrets.backend import (
    GuardedBackend,
    SecretDecryptionError,
    SecretNotFound,
    SecretsBackendUnavailable,
)
from app.secrets.values import SecretRef, SecretValue
from app.secrets.wrapping import KeyWrapper, as_wrapper
from app.tenancy.scope import TenantScope

_NONCE_BYTES = 12
CHANGES_CHANNEL = "bulkhead_secrets"
"""NOTIFY channel: payload is the ref whose versions changed, so replicas drop it at once."""
_log = logging.getLogger(__name__)
_DEK = "SELECT kek_id, wrapped_key FROM tenant_keys WHERE tenant_id = $1"
_DEK_FOR_UPDATE = _DEK + " FOR UPDATE"


class TenantKeyMissing(LookupError):
    """The tenant has no data key: not onboarded yet, or offboarded (crypto-shredded)."""


def _secret_aad(tenant_id: str, ref: str, version: int) -> bytes:
    return f"bulkhead:secret:{tenant_id}:{ref}:{version}".encode()


async def ensure_tenant_key(
    connection: Connection, *, tenant_id: str, kek: bytes | KeyWrapper
) -> bool:
    """Create the tenant's wrapped data key unless it already has one. Idempotent.

    Called by tenant onboarding on its own (owner) connection, inside its transaction; the
    work runs in a savepoint that sets `bulkhead.tenant_id`, since `tenant_keys` forces RLS
    even for its owner. The setting is restored before returning.

    Args:
        connection: An open connection allowed to write `tenant_keys`.
        tenant_id: The tenant being onboarded (its `tenants` row must exist).
        kek: The 32-byte key-encryption key from `load_master_key`, or a `KeyWrapper`
            (Vault Transit).

    Returns:
        True if a key was created, False if the tenant already had one.

    Raises:
        ValueError: `kek` is not a valid AES key.
    """
    wrapper = as_wrapper(kek)
    wrapped = await wrapper.wrap(tenant_id, os.urandom(32))
    scope = TenantScope.system(tenant_id, actor="bulkhead:onboard")
    async with connection.transaction(), within_tenant(connection, scope=scope):
        created = await connection.fetchval(
            "INSERT INTO tenant_keys (tenant_id, kek_id, wrapped_key) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id) DO NOTHING RETURNING true",
            tenant_id,
            wrapper.kek_id,
            wrapped,
        )
    return created is True


async def fetch_wrapped_key(
    connection: Connection, tenant_id: str, *, for_update: bool = False
) -> tuple[str, bytes]:
    """The tenant's wrapped data key and the id of the KEK that wraps it (RLS-scoped).

    Raises:
        TenantKeyMissing: The tenant has no data key.
    """
    row = await connection.fetchrow(_DEK_FOR_UPDATE if for_update else _DEK, tenant_id)
    if row is None:
        raise TenantKeyMissing(f"tenant {tenant_id!r} has no data key")
    return row["kek_id"], bytes(row["wrapped_key"])


def _outage(exc: BaseException) -> SecretsBackendUnavailable:
    return SecretsBackendUnavailable(f"postgres unavailable: {type(exc).__name__}")


# Connection-level failures (not constraint or RLS errors, which are bugs to surface).
_PG_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)


class LocalSecretsBackend(GuardedBackend):
    """`SecretsBackend` over the `tenant_keys` and `secrets` tables, under RLS.

    Only refs under the scope's own tenant are served: platform secrets are not stored here.
    `previous_keks` lets a process unwrap data keys still wrapped by an older KEK while
    `rotate_kek` rewraps them, so a KEK rotation needs no downtime.
    """

    name = "local"
    holds_platform_secrets = False

    def __init__(
        self,
        pool: asyncpg.Pool,
        kek: bytes | KeyWrapper,
        *,
        previous_keks: Sequence[bytes] = (),
    ) -> None:
        self._pool = pool
        self._wrapper = as_wrapper(kek, previous=previous_keks)

    async def _read(
        self, ref: SecretRef, *, scope: TenantScope, version: int | None
    ) -> SecretValue:
        """The latest (or the given) version of `ref`.

        Raises:
            SecretNotFound: Nothing is stored under `ref` (or not that version).
            SecretDecryptionError: The row or the tenant's data key fails authentication.
            SecretsBackendUnavailable: Postgres cannot be reached.
        """
        try:
            async with tenant_transaction(self._pool, scope=scope) as connection:
                row = await connection.fetchrow(
                    "SELECT version, nonce, ciphertext FROM secrets"
                    " WHERE tenant_id = $1 AND ref = $2 AND ($3::int IS NULL OR version = $3)"
                    " ORDER BY version DESC LIMIT 1",
                    scope.tenant_id,
                    str(ref),
                    version,
                )
                if row is None:
                    raise SecretNotFound(f"no secret stored under '{ref}'")
                dek = await self._load_dek(connection, scope.tenant_id)
        except _PG_OUTAGES as exc:
            raise _outage(exc) from exc
        aad = _secret_aad(scope.tenant_id, str(ref), row["version"])
        try:
            plaintext = AESGCM(dek).decrypt(row["nonce"], row["ciphertext"], aad)
        except InvalidTag:
            raise SecretDecryptionError(
                f"secret '{ref}' version {row['version']} failed authentication"
            ) from None
        return SecretValue(plaintext.decode())

    async def _write(self, ref: SecretRef, value: SecretValue, *, scope: TenantScope) -> int:
        """Store a new version of `ref`, one higher than the latest, and NOTIFY replicas.

        Raises:
            TenantKeyMissing: The tenant has no data key.
            SecretDecryptionError: The tenant's data key fails authentication.
            SecretsBackendUnavailable: Postgres cannot be reached.
        """
        try:
            async with tenant_transaction(self._pool, scope=scope) as connection:
                # The row lock on the tenant's key serialises its writers, so max + 1 is unique.
                dek = await self._load_dek(connection, scope.tenant_id, for_update=True)
                version: int = await connection.fetchval(
                    "SELECT coalesce(max(version), 0) + 1 FROM secrets"
                    " WHERE tenant_id = $1 AND ref = $2",
                    scope.tenant_id,
                    str(ref),
                )
                nonce = os.urandom(_NONCE_BYTES)
                aad = _secret_aad(scope.tenant_id, str(ref), version)
                ciphertext = AESGCM(dek).encrypt(nonce, value.reveal().encode(), aad)
                await connection.execute(
                    "INSERT INTO secrets (tenant_id, ref, version, nonce, ciphertext)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    scope.tenant_id,
                    str(ref),
                    version,
                    nonce,
                    ciphertext,
                )
                await _notify(connection, ref)
        except _PG_OUTAGES as exc:
            raise _outage(exc) from exc
        return version

    async def _remove(self, ref: SecretRef, *, scope: TenantScope) -> bool:
        """Delete every version of `ref` and NOTIFY replicas.

        Raises:
            SecretsBackendUnavailable: Postgres cannot be reached.
        """
        try:
            async with tenant_transaction(self._pool, scope=scope) as connection:
                status = await connection.execute(
                    "DELETE FROM secrets WHERE tenant_id = $1 AND ref = $2",
                    scope.tenant_id,
                    str(ref),
                )
                await _notify(connection, ref)
        except _PG_OUTAGES as exc:
            raise _outage(exc) from exc
        return status != "DELETE 0"

    async def list(self, *, scope: TenantScope) -> list[tuple[SecretRef, int]]:
        """The tenant's refs with their latest versions.

        Raises:
            SecretsBackendUnavailable: Postgres cannot be reached.
        """
        try:
            async with tenant_transaction(self._pool, scope=scope) as connection:
                rows = await connection.fetch(
                    "SELECT ref, max(version) AS version FROM secrets WHERE tenant_id = $1"
                    " GROUP BY ref ORDER BY ref",
                    scope.tenant_id,
                )
        except _PG_OUTAGES as exc:
            raise _outage(exc) from exc
        return [(SecretRef.parse(row["ref"]), row["version"]) for row in rows]

    async def data_key(self, *, scope: TenantScope) -> bytes:
        """The tenant's unwrapped 32-byte data key (for encrypting conversation content).

        Raises:
            TenantKeyMissing: The tenant has no data key.
            SecretDecryptionError: The wrapped key fails authentication under this KEK.
        """
        async with tenant_transaction(self._pool, scope=scope) as connection:
            return await self._load_dek(connection, scope.tenant_id)

    async def health(self) -> bool:
        """Whether Postgres answers."""
        try:
            async with self._pool.acquire() as connection:
                return bool(await connection.fetchval("SELECT 1") == 1)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    async def close(self) -> None:
        """Close the Transit client, if any; the pool belongs to the caller."""
        close = getattr(self._wrapper, "close", None)
        if close is not None:
            await close()

    async def _load_dek(
        self, connection: Connection, tenant_id: str, *, for_update: bool = False
    ) -> bytes:
        kek_id, wrapped = await fetch_wrapped_key(connection, tenant_id, for_update=for_update)
        return await self._wrapper.unwrap(tenant_id, wrapped, kek_id)


async def _notify(connection: Connection, ref: SecretRef) -> None:
    # Delivered at commit, so replicas never refetch before the new version is visible.
    await connection.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, str(ref))


@dataclass(frozen=True, slots=True)
class KekRotation:
    """What `rotate_kek` did.

    Attributes:
        rewrapped: Tenants whose data key is now wrapped by the new KEK.
        unchanged: Tenants already on the new KEK (or without a data key).
        failed: Tenants whose key is wrapped by a KEK not supplied, or fails to unwrap.
    """

    rewrapped: tuple[str, ...]
    unchanged: tuple[str, ...]
    failed: tuple[str, ...]


async def rotate_kek(
    connection: Connection,
    *,
    kek: bytes | KeyWrapper,
    previous_keks: Sequence[bytes | KeyWrapper],
    tenant_ids: Sequence[str] | None = None,
) -> KekRotation:
    """Rewrap tenants' data keys under `kek`, one tenant per short transaction.

    Replicas started with the new KEK and the old ones as `previous_master_keys` read both
    wrappings, so the service keeps serving while this runs. Data keys themselves do not
    change, so no secret is re-encrypted. Idempotent: keys already under `kek` are skipped,
    and a tenant that fails is reported, not fatal, so one bad row cannot block the rest.

    Args:
        connection: An owner connection (it reads the `tenants` table).
        kek: The new key-encryption key (a master key, or a Transit `KeyWrapper`).
        previous_keks: Every older KEK that may still wrap a data key.
        tenant_ids: Only these tenants (default: every tenant).

    Returns:
        Which tenants were rewrapped, unchanged, or failed.
    """
    target = as_wrapper(kek)
    sources = [as_wrapper(key) for key in previous_keks]
    if tenant_ids is None:
        tenant_ids = [r["id"] for r in await connection.fetch("SELECT id FROM tenants ORDER BY id")]
    rewrapped: list[str] = []
    unchanged: list[str] = []
    failed: list[str] = []
    for tenant_id in tenant_ids:
        scope = TenantScope.system(tenant_id, actor="bulkhead:rotate-kek")
        async with tenant_transaction(connection, scope=scope):
            row = await connection.fetchrow(_DEK_FOR_UPDATE, tenant_id)
            if row is None or row["kek_id"] == target.kek_id:
                unchanged.append(tenant_id)
                continue
            source = next((w for w in sources if w.can_unwrap(row["kek_id"])), None)
            try:
                if source is None:
                    raise SecretDecryptionError(f"no previous key unwraps {row['kek_id']}")
                dek = await source.unwrap(tenant_id, row["wrapped_key"], row["kek_id"])
            except SecretDecryptionError:
                _log.error("tenant %r data key (%s) cannot be unwrapped", tenant_id, row["kek_id"])
                failed.append(tenant_id)
                continue
            await connection.execute(
                "UPDATE tenant_keys SET kek_id = $2, wrapped_key = $3, rotated_at = now()"
                " WHERE tenant_id = $1",
                tenant_id,
                target.kek_id,
                await target.wrap(tenant_id, dek),
            )
            rewrapped.append(tenant_id)
    return KekRotation(tuple(rewrapped), tuple(unchanged), tuple(failed))


async def listen_for_changes(dsn: str, on_change: Callable[[str], None]) -> asyncpg.Connection:
    """LISTEN for secret changes; `on_change(ref)` runs for each. Close the connection to stop."""
    connection = await connect(dsn)

    def deliver(*args: object) -> None:
        payload = args[3]
        if isinstance(payload, str):
            on_change(payload)

    await connection.add_listener(CHANGES_CHANNEL, deliver)
    return connection
