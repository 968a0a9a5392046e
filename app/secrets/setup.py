"""Choose and open the configured secrets backend (`secrets.backend`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.secrets.aws import AwsSecretsBackend
from app.secrets.env import EnvSecretsBackend
from app.secrets.kek import load_previous_master_keys
from app.secrets.local import LocalSecretsBackend
from app.secrets.vault import VaultSecretsBackend

if TYPE_CHECKING:
    import asyncpg

    from app.config import Settings
    from app.secrets.backend import SecretsBackend


def build_backend(settings: Settings, *, pool: asyncpg.Pool | None, kek: bytes) -> SecretsBackend:
    """The backend `settings.secrets.backend` names.

    Raises:
        ValueError: The env backend outside dev mode, or a backend missing its settings
            (the local backend needs `pool`).
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
    if pool is None:
        raise ValueError("the local secrets backend needs a database pool")
    return LocalSecretsBackend(pool, kek, previous_keks=load_previous_master_keys(settings))
