"""Tenant admins' API key operations: one tenant transaction each, evicting what changed."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.db.pool import tenant_transaction
from app.identity import api_keys
from app.identity.key_store import ApiKeyStore
from app.tenancy.scope import TenantScope


class ApiKeyAdmin:
    """Create, list, rotate and revoke the caller's tenant's service API keys.

    Every operation runs under the caller's `TenantScope` (RLS keeps it to their tenant), and a
    rotation or revocation evicts the key from this replica's store at once; the others hear it
    by NOTIFY moments later.
    """

    def __init__(self, pool: asyncpg.Pool, store: ApiKeyStore) -> None:
        self._pool = pool
        self._store = store

    async def create(
        self,
        scope: TenantScope,
        *,
        name: str,
        scopes: list[str],
        expires_at: datetime | None,
        allowed_cidrs: list[str],
    ) -> api_keys.CreatedKey:
        """A new key for the caller's tenant (its plaintext is in the result, once)."""
        async with tenant_transaction(self._pool, scope=scope) as connection:
            return await api_keys.create_key(
                connection,
                tenant_id=scope.tenant_id,
                hasher=self._store.hasher,
                name=name,
                scopes=scopes,
                created_by=scope.subject,
                expires_at=expires_at,
                allowed_cidrs=allowed_cidrs,
            )

    async def list_keys(self, scope: TenantScope) -> list[api_keys.ApiKeyInfo]:
        """The tenant's keys, without secrets."""
        async with tenant_transaction(self._pool, scope=scope) as connection:
            return await api_keys.list_keys(connection, tenant_id=scope.tenant_id)

    async def rotate(
        self, scope: TenantScope, key_id: str, *, grace_seconds: int
    ) -> tuple[api_keys.CreatedKey, api_keys.ApiKeyInfo]:
        """A successor for `key_id`, and the old key as it now stands (valid for the grace)."""
        async with tenant_transaction(self._pool, scope=scope) as connection:
            rotated = await api_keys.rotate_key(
                connection,
                tenant_id=scope.tenant_id,
                hasher=self._store.hasher,
                key_id=key_id,
                grace_seconds=grace_seconds,
                created_by=scope.subject,
            )
        self._store.evict(key_id)
        return rotated

    async def revoke(self, scope: TenantScope, key_id: str) -> None:
        """Revoke `key_id` on every replica."""
        async with tenant_transaction(self._pool, scope=scope) as connection:
            await api_keys.revoke_key(connection, tenant_id=scope.tenant_id, key_id=key_id)
        self._store.evict(key_id)
