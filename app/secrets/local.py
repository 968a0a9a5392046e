"""The default backend: secrets in Postgres, envelope-encrypted per tenant (DESIGN §3.7).

A tenant's 32-byte data key (DEK) is stored in `tenant_keys`, AES-GCM-wrapped by the KEK.
Secrets are AES-GCM-encrypted with the DEK. Every ciphertext is bound by its associated data
to where it lives (tenant, ref, version), so a row copied elsewhere fails to decrypt.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.db.pool import Connection, set_tenant, tenant_transaction
from app.secrets.backend import SecretDecryptionError, SecretNotFound
from app.secrets.kek import kek_id
from app.secrets.values import SecretRef, SecretValue, ensure_ref_allowed

if TYPE_CHECKING:
    from app.tenancy.scope import TenantScope

_NONCE_BYTES = 12
_DEK = "SELECT kek_id, wrapped_key FROM tenant_keys WHERE tenant_id = $1"
_DEK_FOR_UPDATE = _DEK + " FOR UPDATE"


class TenantKeyMissing(LookupError):
    """The tenant has no data key: not onboarded yet, or offboarded (crypto-shredded)."""


def _dek_aad(tenant_id: str) -> bytes:
    return b"bulkhead:dek:" + tenant_id.encode()


def _secret_aad(tenant_id: str, ref: str, version: int) -> bytes:
    return f"bulkhead:secret:{tenant_id}:{ref}:{version}".encode()


async def ensure_tenant_key(connection: Connection, *, tenant_id: str, kek: bytes) -> bool:
    """Create the tenant's wrapped data key unless it already has one. Idempotent.

    Called by tenant onboarding on its own (owner) connection, inside its transaction; the
    work runs in a savepoint that sets `bulkhead.tenant_id`, since `tenant_keys` forces RLS
    even for its owner. The setting is restored before returning.

    Args:
        connection: An open connection allowed to write `tenant_keys`.
        tenant_id: The tenant being onboarded (its `tenants` row must exist).
        kek: The 32-byte key-encryption key, from `load_master_key`.

    Returns:
        True if a key was created, False if the tenant already had one.

    Raises:
        ValueError: `kek` is not a valid AES key.
    """
    wrapped = os.urandom(_NONCE_BYTES)
    wrapped += AESGCM(kek).encrypt(wrapped, os.urandom(32), _dek_aad(tenant_id))
    async with connection.transaction():
        previous = await connection.fetchval("SELECT current_setting('bulkhead.tenant_id', true)")
        await set_tenant(connection, tenant_id)
        created = await connection.fetchval(
            "INSERT INTO tenant_keys (tenant_id, kek_id, wrapped_key) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id) DO NOTHING RETURNING true",
            tenant_id,
            kek_id(kek),
            wrapped,
        )
        await set_tenant(connection, previous or "")
    return created is True


class LocalSecretsBackend:
    """`SecretsBackend` over the `tenant_keys` and `secrets` tables, under RLS.

    Only refs under the scope's own tenant are served: platform secrets are not stored here.
    """

    def __init__(self, pool: asyncpg.Pool, kek: bytes) -> None:
        self._pool = pool
        self._kek = AESGCM(kek)
        self._kek_id = kek_id(kek)

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        """The latest version of `ref`.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            SecretNotFound: Nothing is stored under `ref`.
            SecretDecryptionError: The row or the tenant's data key fails authentication.
        """
        ensure_ref_allowed(ref, scope=scope)
        async with tenant_transaction(self._pool, scope=scope) as connection:
            row = await connection.fetchrow(
                "SELECT version, nonce, ciphertext FROM secrets WHERE tenant_id = $1 AND ref = $2"
                " ORDER BY version DESC LIMIT 1",
                scope.tenant_id,
                str(ref),
            )
            if row is None:
                raise SecretNotFound(f"no secret stored under '{ref}'")
            dek = await self._load_dek(connection, scope.tenant_id)
        aad = _secret_aad(scope.tenant_id, str(ref), row["version"])
        try:
            plaintext = AESGCM(dek).decrypt(row["nonce"], row["ciphertext"], aad)
        except InvalidTag:
            raise SecretDecryptionError(
                f"secret '{ref}' version {row['version']} failed authentication"
            ) from None
        return SecretValue(plaintext.decode())

    async def put(self, ref: SecretRef, value: SecretValue, *, scope: TenantScope) -> int:
        """Store a new version of `ref`, one higher than the latest.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            TenantKeyMissing: The tenant has no data key.
            SecretDecryptionError: The tenant's data key fails authentication.
        """
        ensure_ref_allowed(ref, scope=scope)
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
        return version

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

    async def _load_dek(
        self, connection: Connection, tenant_id: str, *, for_update: bool = False
    ) -> bytes:
        row = await connection.fetchrow(_DEK_FOR_UPDATE if for_update else _DEK, tenant_id)
        if row is None:
            raise TenantKeyMissing(f"tenant {tenant_id!r} has no data key")
        if row["kek_id"] != self._kek_id:
            raise SecretDecryptionError(
                f"tenant {tenant_id!r} data key is wrapped by {row['kek_id']},"
                f" this process holds {self._kek_id}"
            )
        wrapped: bytes = row["wrapped_key"]
        try:
            return self._kek.decrypt(
                wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _dek_aad(tenant_id)
            )
        except InvalidTag:
            raise SecretDecryptionError(
                f"tenant {tenant_id!r} data key failed authentication"
            ) from None
