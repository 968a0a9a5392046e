"""Dev-only, read-only backend: secrets from environment variables.

`tenants/demo/openai` is read from `BULKHEAD_SECRET_TENANTS_DEMO_OPENAI` (upper case, every
`/`, `-` and `.` as `_`). Refused outside dev mode by `build_backend`.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from app.secrets.backend import GuardedBackend, SecretNotFound, SecretsReadOnly
from app.secrets.values import SecretRef, SecretValue

if TYPE_CHECKING:
    from app.tenancy.scope import TenantScope

ENV_PREFIX = "BULKHEAD_SECRET_"


def env_name(ref: SecretRef) -> str:
    """The environment variable that holds `ref`."""
    return ENV_PREFIX + re.sub(r"[/.\-]", "_", str(ref)).upper()


class EnvSecretsBackend(GuardedBackend):
    """`SecretsBackend` over the process environment; every version is version 1."""

    name = "env"

    async def _read(
        self, ref: SecretRef, *, scope: TenantScope, version: int | None
    ) -> SecretValue:
        """The value of `ref`'s environment variable.

        Raises:
            SecretNotFound: The variable is unset or empty, or a version other than 1 is asked.
        """
        text = os.environ.get(env_name(ref))
        if not text or version not in (None, 1):
            raise SecretNotFound(f"no secret stored under '{ref}' (set {env_name(ref)})")
        return SecretValue(text)

    async def _write(self, ref: SecretRef, value: SecretValue, *, scope: TenantScope) -> int:
        """Always refused.

        Raises:
            SecretsReadOnly: Always.
        """
        raise SecretsReadOnly(f"the env backend is read-only: set {env_name(ref)} instead")

    async def _remove(self, ref: SecretRef, *, scope: TenantScope) -> bool:
        """Always refused.

        Raises:
            SecretsReadOnly: Always.
        """
        raise SecretsReadOnly(f"the env backend is read-only: unset {env_name(ref)} instead")

    async def list(self, *, scope: TenantScope) -> list[tuple[SecretRef, int]]:
        """Refs whose variables are set for the tenant (names come back upper-cased)."""
        prefix = env_name(SecretRef(tenant_id=scope.tenant_id, name="x"))[:-1]
        refs = [
            (SecretRef(tenant_id=scope.tenant_id, name=key[len(prefix) :]), 1)
            for key, text in os.environ.items()
            if key.startswith(prefix) and text and len(key) > len(prefix)
        ]
        return sorted(refs, key=lambda pair: str(pair[0]))

    async def health(self) -> bool:
        """Always ready."""
        return True

    async def close(self) -> None:
        """Nothing to release."""
