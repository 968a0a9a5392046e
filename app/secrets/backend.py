"""The seam every secrets store implements (local envelope store now; OpenBao, AWS later)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.secrets.values import SecretRef, SecretValue
    from app.tenancy.scope import TenantScope


class SecretNotFound(LookupError):
    """No secret is stored under the ref (for the caller's tenant)."""


class SecretDecryptionError(RuntimeError):
    """Stored ciphertext failed authentication: tampered, moved between rows, or wrong key."""


class SecretsBackend(Protocol):
    """Reads and writes tenant secrets. Implementations enforce `ensure_ref_allowed`."""

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        """The latest version of `ref`.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
            SecretNotFound: Nothing is stored under `ref`.
            SecretDecryptionError: The stored value does not decrypt.
        """
        ...

    async def put(self, ref: SecretRef, value: SecretValue, *, scope: TenantScope) -> int:
        """Store a new version of `ref` and return its version number.

        Raises:
            SecretAccessDenied: `ref` is outside `scope`'s tenant.
        """
        ...

    async def health(self) -> bool:
        """Whether the backend can serve reads now."""
        ...
