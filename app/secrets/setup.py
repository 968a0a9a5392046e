"""Choose and open the configured secrets backend (`secrets.backend`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.secrets.aws import AwsSecretsBackend
from app.secrets.env import EnvSecretsBackend
from app.secrets.kek import load_previous_master_keys
from app.secrets.local import LocalSecretsBackend
from app.secrets.vault import VaultSecretsBackend
from app.secrets.wrapping import TRANSIT_PREFIX, KeyWrapper, TransitKeyWrapper

if TYPE_CHECKING:
    import asyncpg

    from app.config import Settings
    from app.secrets.backend import SecretsBackend


def build_backend(
    settings: Settings, *, pool: asyncpg.Pool | None, kek: bytes | None
) -> SecretsBackend:
    """The backend `settings.secrets.backend` names.

    Raises:
        ValueError: The env backend outside dev mode, or a backend missing its settings
            (the local backend needs `pool` and `kek`).
        MasterKeyInvalid: A previous master key is malformed.
    """
    choice = settings.secrets.backend
    if choice == "vault":
        return VaultSecretsBackend(settings.secrets.vault)
    if choice == "aws":
        return AwsSecretsBackend(settings.secrets.aws)
    if choice == "env":
        if not settings.dev:
            raise ValueError("the env secrets backend is for dev mode only (BULKHEAD_DEV=1)")
        return EnvSecretsBackend()
    if pool is None or kek is None:
        raise ValueError("the local secrets backend needs a database pool and the master key")
    return LocalSecretsBackend(
        pool, data_key_wrapper(settings, kek), previous_keks=load_previous_master_keys(settings)
    )


def data_key_wrapper(settings: Settings, kek: bytes) -> bytes | KeyWrapper:
    """What wraps tenant data keys: the master key itself, or a Vault Transit key.

    Raises:
        ValueError: `secrets.kek` is set to something other than `vault-transit:<key>`.
    """
    choice = settings.secrets.kek
    if not choice:
        return kek
    if not choice.startswith(TRANSIT_PREFIX) or len(choice) == len(TRANSIT_PREFIX):
        raise ValueError("BULKHEAD_SECRETS__KEK must be empty or 'vault-transit:<key>'")
    return TransitKeyWrapper(
        settings.secrets.vault,
        choice.removeprefix(TRANSIT_PREFIX),
        mount=settings.secrets.transit_mount,
    )
