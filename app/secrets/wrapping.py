"""Who wraps the per-tenant data keys: the local master key, or OpenBao/Vault Transit.

`secrets.kek` selects it: empty for the local master key (AES-256-GCM), or
`vault-transit:<key>` to have Transit encrypt and decrypt the data keys, so the KEK never
leaves Vault. Either way the tenant id is bound in as associated data, so a wrapped key copied
to another tenant's row does not unwrap.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import hvac
import hvac.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.secrets.backend import SecretDecryptionError
from app.secrets.kek import kek_id
from app.secrets.vault import VaultConnection

if TYPE_CHECKING:
    from app.config import VaultSettings

_NONCE_BYTES = 12
TRANSIT_PREFIX = "vault-transit:"


def dek_aad(tenant_id: str) -> bytes:
    """Associated data of a tenant's wrapped data key."""
    return b"bulkhead:dek:" + tenant_id.encode()


class KeyWrapper(Protocol):
    """Wraps and unwraps tenant data keys; `kek_id` is stored beside each wrapped key."""

    kek_id: str

    def can_unwrap(self, kek_id: str) -> bool:
        """Whether keys wrapped under `kek_id` can be unwrapped here."""
        ...

    async def wrap(self, tenant_id: str, dek: bytes) -> bytes:
        """The wrapped form of `dek` for `tenant_id`."""
        ...

    async def unwrap(self, tenant_id: str, wrapped: bytes, kek_id: str) -> bytes:
        """The data key.

        Raises:
            SecretDecryptionError: The wrapped key fails authentication, or its KEK is unknown.
            SecretsBackendUnavailable: The KEK's holder (Vault) cannot be reached.
        """
        ...


class LocalKeyWrapper:
    """AES-256-GCM under the master key; older master keys are accepted for unwrapping."""

    def __init__(self, kek: bytes, *, previous: Sequence[bytes] = ()) -> None:
        self._kek = AESGCM(kek)
        self.kek_id = kek_id(kek)
        self._keyring = {kek_id(key): AESGCM(key) for key in (*previous, kek)}

    def can_unwrap(self, kek_id: str) -> bool:
        """Whether `kek_id` is the current or a previous master key."""
        return kek_id in self._keyring

    async def wrap(self, tenant_id: str, dek: bytes) -> bytes:
        """Nonce + AES-GCM(dek) with the tenant id as associated data."""
        return self.wrap_now(tenant_id, dek)

    def wrap_now(self, tenant_id: str, dek: bytes) -> bytes:
        """`wrap`, synchronously (no I/O involved)."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._kek.encrypt(nonce, dek, dek_aad(tenant_id))

    async def unwrap(self, tenant_id: str, wrapped: bytes, kek_id: str) -> bytes:
        """The data key; see `KeyWrapper.unwrap`.

        Raises:
            SecretDecryptionError: Unknown KEK or failed authentication.
        """
        kek = self._keyring.get(kek_id)
        if kek is None:
            raise SecretDecryptionError(
                f"tenant {tenant_id!r} data key is wrapped by {kek_id},"
                f" this process holds {sorted(self._keyring)}"
            )
        try:
            return kek.decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], dek_aad(tenant_id))
        except InvalidTag:
            raise SecretDecryptionError(
                f"tenant {tenant_id!r} data key failed authentication"
            ) from None


class TransitKeyWrapper:
    """Data keys wrapped by a Transit key of OpenBao/Vault (`kek: vault-transit:<key>`).

    Transit's own key versions are in each ciphertext (`vault:v2:...`), so rotating the
    Transit key needs no change here; `bulkhead secrets rotate-kek` rewraps to the latest.
    """

    def __init__(
        self,
        settings: VaultSettings,
        key: str,
        *,
        mount: str = "transit",
        client: hvac.Client | None = None,
    ) -> None:
        self.kek_id = TRANSIT_PREFIX + key
        self._key = key
        self._mount = mount
        self._connection = VaultConnection(settings, client=client)

    def can_unwrap(self, kek_id: str) -> bool:
        """Whether `kek_id` names this Transit key."""
        return kek_id == self.kek_id

    async def wrap(self, tenant_id: str, dek: bytes) -> bytes:
        """Transit ciphertext (`vault:vN:...`) of `dek`, bound to the tenant.

        Raises:
            SecretsBackendUnavailable: Vault cannot be reached or refuses the request.
        """
        response = await self._call(
            lambda c: c.secrets.transit.encrypt_data(
                name=self._key,
                plaintext=base64.b64encode(dek).decode(),
                associated_data=base64.b64encode(dek_aad(tenant_id)).decode(),
                mount_point=self._mount,
            )
        )
        return str(response["data"]["ciphertext"]).encode()

    async def unwrap(self, tenant_id: str, wrapped: bytes, kek_id: str) -> bytes:
        """The data key; see `KeyWrapper.unwrap`.

        Raises:
            SecretDecryptionError: Not this key's ciphertext, or authentication failed.
            SecretsBackendUnavailable: Vault cannot be reached.
        """
        if kek_id != self.kek_id:
            raise SecretDecryptionError(
                f"tenant {tenant_id!r} data key is wrapped by {kek_id}, not {self.kek_id}"
            )
        try:
            response = await self._call(
                lambda c: c.secrets.transit.decrypt_data(
                    name=self._key,
                    ciphertext=wrapped.decode(),
                    associated_data=base64.b64encode(dek_aad(tenant_id)).decode(),
                    mount_point=self._mount,
                )
            )
        except hvac.exceptions.InvalidRequest:
            raise SecretDecryptionError(
                f"tenant {tenant_id!r} data key failed authentication"
            ) from None
        return base64.b64decode(response["data"]["plaintext"])

    async def close(self) -> None:
        """Stop the worker threads and close the HTTP session."""
        await self._connection.close()

    async def _call(self, operation: Callable[[hvac.Client], Any]) -> Any:
        return await self._connection.call(operation)


def as_wrapper(kek: bytes | KeyWrapper, *, previous: Sequence[bytes] = ()) -> KeyWrapper:
    """A raw master key becomes a `LocalKeyWrapper`; a wrapper is returned as it is."""
    if isinstance(kek, bytes):
        return LocalKeyWrapper(kek, previous=previous)
    return kek
