"""The seam every secrets store implements: local (Postgres), vault (OpenBao/Vault), aws, env.

Each store reaches its refs through one guarded path, `GuardedBackend`: its `get`, `put` and
`delete` check the ref against the caller's scope (`ensure_ref_allowed`), then hand it to the
store's own `_read`, `_write` or `_remove`. A store never checks, and never skips the check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol

from app.secrets.values import ensure_ref_allowed

if TYPE_CHECKING:
    from app.secrets.values import SecretRef, SecretValue
    from app.tenancy.scope import TenantScope


class SecretNotFound(LookupError):
    """No secret is stored under the ref (for the caller's tenant)."""


class SecretDecryptionError(RuntimeError):
    """Stored ciphertext failed authentication: tampered, moved between rows, or wrong key."""


class SecretsBackendUnavailable(RuntimeError):
    """The store cannot be reached or refused our own credential: an outage, not a miss.

    The cache serves stale values through these (up to its maximum staleness).
    """


class SecretsReadOnly(PermissionError):
    """The backend does not accept writes (the env backend)."""


class SecretsBackend(Protocol):
    """Reads and writes tenant secrets; `GuardedBackend` is every store's implementation.

    `platform_refs` are the platform refs the calling tenant's manifest opts into; a backend
    refuses every other ref outside the scope's own tenant prefix.
    """

    name: str

    async def get(
        self,
        ref: SecretRef,
        *,
        scope: TenantScope,
        version: int | None = None,
        platform_refs: frozenset[str] = frozenset(),
    ) -> SecretValue:
        """The latest (or the given) version of `ref`.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            SecretNotFound: Nothing is stored under `ref` (or not that version).
            SecretDecryptionError: The stored value does not decrypt.
            SecretsBackendUnavailable: The store cannot be reached.
        """
        ...

    async def put(
        self,
        ref: SecretRef,
        value: SecretValue,
        *,
        scope: TenantScope,
        platform_refs: frozenset[str] = frozenset(),
    ) -> int:
        """Store a new version of `ref` and return its version number (1, 2, ...).

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            SecretsReadOnly: The backend accepts no writes.
            SecretsBackendUnavailable: The store cannot be reached.
        """
        ...

    async def delete(
        self, ref: SecretRef, *, scope: TenantScope, platform_refs: frozenset[str] = frozenset()
    ) -> bool:
        """Delete every version of `ref`; True if something was deleted.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            SecretsReadOnly: The backend accepts no writes.
            SecretsBackendUnavailable: The store cannot be reached.
        """
        ...

    async def list(self, *, scope: TenantScope) -> list[tuple[SecretRef, int]]:
        """The tenant's refs with their latest version numbers, sorted by ref.

        Raises:
            SecretsBackendUnavailable: The store cannot be reached.
        """
        ...

    async def health(self) -> bool:
        """Whether the backend can serve reads now."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


class GuardedBackend(ABC):
    """The one guarded path into a store: every ref is checked against the scope here, first.

    A ref under the scope's own tenant passes; a platform ref passes only when the tenant's
    manifest opts into it (`platform_refs`) and the store holds platform secrets at all.
    """

    name: str
    holds_platform_secrets: ClassVar[bool] = True
    """False for a store of tenant secrets only (local): it resolves no platform ref."""

    async def get(
        self,
        ref: SecretRef,
        *,
        scope: TenantScope,
        version: int | None = None,
        platform_refs: frozenset[str] = frozenset(),
    ) -> SecretValue:
        """The latest (or the given) version of `ref`, once `scope` may resolve it.

        Raises:
            SecretAccessDenied: `ref` is outside what `scope` may resolve.
        """
        self._guard(ref, scope, platform_refs)
        return await self._read(ref, scope=scope, version=version)

    async def put(
        self,
        ref: SecretRef,
        value: SecretValue,
        *,
        scope: TenantScope,
        platform_refs: frozenset[str] = frozenset(),
    ) -> int:
        """Store a new version of `ref`, once `scope` may resolve it; returns its number.

        Raises:
            SecretAccessDenied: `ref` is outside what `scope` may resolve.
        """
        self._guard(ref, scope, platform_refs)
        return await self._write(ref, value, scope=scope)

    async def delete(
        self, ref: SecretRef, *, scope: TenantScope, platform_refs: frozenset[str] = frozenset()
    ) -> bool:
        """Delete every version of `ref`, once `scope` may resolve it; True if one existed.

        Raises:
            SecretAccessDenied: `ref` is outside what `scope` may resolve.
        """
        self._guard(ref, scope, platform_refs)
        return await self._remove(ref, scope=scope)

    def _guard(self, ref: SecretRef, scope: TenantScope, platform_refs: frozenset[str]) -> None:
        allowed = platform_refs if self.holds_platform_secrets else frozenset()
        ensure_ref_allowed(ref, scope=scope, platform_refs=allowed)

    @abstractmethod
    async def _read(
        self, ref: SecretRef, *, scope: TenantScope, version: int | None
    ) -> SecretValue:
        """The store's read of a ref already checked."""

    @abstractmethod
    async def _write(self, ref: SecretRef, value: SecretValue, *, scope: TenantScope) -> int:
        """The store's write of a ref already checked."""

    @abstractmethod
    async def _remove(self, ref: SecretRef, *, scope: TenantScope) -> bool:
        """The store's delete of a ref already checked."""
