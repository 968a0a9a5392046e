"""The seam every secrets store implements: local (Postgres), vault (OpenBao/Vault), aws, env."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

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
    """Reads and writes tenant secrets. Implementations enforce `ensure_ref_allowed`.

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
