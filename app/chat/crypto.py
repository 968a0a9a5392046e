"""Conversation content at rest: AES-256-GCM under the tenant's data key (docs/chat.md).

The data key is the one the local secrets backend keeps in `tenant_keys`, wrapped by the KEK
(master key or Vault Transit), whichever secrets backend serves provider keys. Each message
is sealed on its own, with associated data binding it to its tenant, conversation, message id
and role: a sealed row copied to another tenant, conversation or turn fails to open.
Destroying the tenant's data key (offboarding) makes every sealed message unreadable.
"""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.secrets.backend import SecretDecryptionError
from app.secrets.kek import load_previous_master_keys
from app.secrets.local import fetch_wrapped_key
from app.secrets.setup import data_key_wrapper
from app.secrets.wrapping import KeyWrapper, as_wrapper

if TYPE_CHECKING:
    from app.config import Settings
    from app.db.pool import Connection

_NONCE_BYTES = 12


class ConversationDecryptionError(SecretDecryptionError):
    """A stored message failed authentication: tampered, moved, or its key is gone."""


def message_aad(
    tenant_id: str, conversation_id: uuid.UUID, message_id: uuid.UUID, role: str
) -> bytes:
    """Associated data of one sealed message."""
    return f"bulkhead:message:{tenant_id}:{conversation_id}:{message_id}:{role}".encode()


class MessageSealer:
    """Seals and opens one tenant's messages with its data key.

    Attributes:
        kek_id: The id of the KEK that wraps the data key ("" when not known).
        wrapped_key: The data key as stored, wrapped: with `kek_id`, what identifies it.
    """

    def __init__(
        self, tenant_id: str, aead: AESGCM, *, kek_id: str = "", wrapped_key: bytes = b""
    ) -> None:
        self.tenant_id = tenant_id
        self._aead = aead
        self.kek_id = kek_id
        self.wrapped_key = wrapped_key

    def seal(
        self,
        content: dict[str, Any],
        *,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        role: str,
    ) -> bytes:
        """Nonce + AES-GCM of the JSON-encoded content."""
        nonce = os.urandom(_NONCE_BYTES)
        aad = message_aad(self.tenant_id, conversation_id, message_id, role)
        return nonce + self._aead.encrypt(nonce, msgspec.json.encode(content), aad)

    def open(
        self, sealed: bytes, *, conversation_id: uuid.UUID, message_id: uuid.UUID, role: str
    ) -> dict[str, Any]:
        """The content `seal` was given.

        Raises:
            ConversationDecryptionError: Wrong key, tampered row, or a row moved elsewhere.
        """
        aad = message_aad(self.tenant_id, conversation_id, message_id, role)
        try:
            plain = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise ConversationDecryptionError(
                f"message {message_id} of conversation {conversation_id} failed authentication"
            ) from None
        content: dict[str, Any] = msgspec.json.decode(plain)
        return content


class ConversationCipher:
    """Hands out a tenant's `MessageSealer`, unwrapping its data key at most once per wrapping.

    `sealer` reads the wrapped key (inside the caller's transaction, under RLS), and the
    unwrapped key is cached by the wrapped bytes: a destroyed key stops working at once, and a
    Vault Transit KEK is not asked again for every message. `last_sealer` skips the read: its
    user must check, in the transaction that stores the sealed rows, that the key is still the
    tenant's (`bulkhead_save_turn` does), and call `forget` when it is not.
    """

    def __init__(self, wrapper: KeyWrapper, *, cache_size: int = 1_024) -> None:
        self._wrapper = wrapper
        self._cache: OrderedDict[tuple[str, str, bytes], AESGCM] = OrderedDict()
        self._cache_size = cache_size
        # Per tenant, the slot of `_cache` its last `sealer` call found.
        self._latest: dict[str, tuple[str, str, bytes]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, kek: bytes) -> ConversationCipher:
        """The cipher for the configured KEK (and previous master keys during a rotation)."""
        wrapper = as_wrapper(
            data_key_wrapper(settings, kek), previous=load_previous_master_keys(settings)
        )
        return cls(wrapper, cache_size=settings.chat.key_cache_size)

    async def sealer(self, connection: Connection, *, tenant_id: str) -> MessageSealer:
        """The tenant's sealer; `connection` must be in a transaction scoped to `tenant_id`.

        Raises:
            TenantKeyMissing: The tenant has no data key (not onboarded, or offboarded).
            SecretDecryptionError: The data key does not unwrap under this process's KEKs.
            SecretsBackendUnavailable: The KEK's holder (Vault Transit) cannot be reached.
        """
        kek_id, wrapped = await fetch_wrapped_key(connection, tenant_id)
        slot = (tenant_id, kek_id, wrapped)
        aead = self._cache.get(slot)
        if aead is None:
            aead = AESGCM(await self._wrapper.unwrap(tenant_id, wrapped, kek_id))
            self._cache[slot] = aead
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(slot)
        self._latest[tenant_id] = slot
        return MessageSealer(tenant_id, aead, kek_id=kek_id, wrapped_key=wrapped)

    def last_sealer(self, tenant_id: str) -> MessageSealer | None:
        """The sealer of the data key `sealer` last found for the tenant, if still cached."""
        slot = self._latest.get(tenant_id)
        aead = self._cache.get(slot) if slot is not None else None
        if slot is None or aead is None:
            self._latest.pop(tenant_id, None)
            return None
        return MessageSealer(tenant_id, aead, kek_id=slot[1], wrapped_key=slot[2])

    def forget(self, tenant_id: str) -> None:
        """Stop handing out the tenant's last key from `last_sealer` (it changed)."""
        self._latest.pop(tenant_id, None)
