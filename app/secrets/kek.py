"""The local backend's key-encryption key (KEK): loaded from settings or a 0600 file."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from app.config import Settings

KEY_BYTES = 32

_log = logging.getLogger(__name__)


class MasterKeyError(RuntimeError):
    """The KEK cannot be loaded."""


class MasterKeyMissing(MasterKeyError):
    """No KEK is configured and none may be generated (outside dev)."""


class MasterKeyInvalid(MasterKeyError):
    """The configured KEK is malformed or its file is readable by others."""


def load_master_key(settings: Settings) -> bytes:
    """The 32-byte KEK: `secrets.master_key`, else the key file, generated in dev if absent.

    Raises:
        MasterKeyMissing: Outside dev, neither the setting nor the file exists.
        MasterKeyInvalid: The key is not base64 of 32 bytes, or (outside dev) the file is
            group- or world-accessible.
    """
    if settings.secrets.master_key:
        return _decode(settings.secrets.master_key, source="BULKHEAD_SECRETS__MASTER_KEY")
    path = settings.master_key_path
    if not path.exists():
        if not settings.dev:
            raise MasterKeyMissing(
                f"no master key: set BULKHEAD_SECRETS__MASTER_KEY to a base64 32-byte key, or"
                f" BULKHEAD_SECRETS__MASTER_KEY_FILE to a 0600 file holding one (looked for"
                f" {path}); generate one with: head -c 32 /dev/urandom | base64"
            )
        _generate(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        message = f"master key file {path} is accessible by group/others (mode {mode & 0o777:o})"
        if not settings.dev:
            raise MasterKeyInvalid(f"{message}; run: chmod 600 {path}")
        _log.warning("%s; this is refused outside dev", message)
    return _decode(path.read_bytes().strip(), source=str(path))


def kek_id(key: bytes) -> str:
    """A stable, non-secret id of a KEK, stored beside every key it wraps."""
    return "local:" + hashlib.sha256(key).hexdigest()[:16]


def _decode(text: str | bytes, *, source: str) -> bytes:
    # The messages name the source, never the text: it is the key.
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyInvalid(f"master key from {source} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyInvalid(
            f"master key from {source} decodes to {len(key)} bytes; expected {KEY_BYTES}"
        )
    return key


def _generate(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL: two replicas starting at once must not each write (and use) a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
    _log.warning("generated a dev master key at %s; back it up or lose every secret", path)


def load_previous_master_keys(settings: Settings) -> list[bytes]:
    """Older KEKs still accepted during a rotation (`secrets.previous_master_keys`).

    Raises:
        MasterKeyInvalid: One of them is not base64 of 32 bytes.
    """
    return [
        _decode(text, source=f"BULKHEAD_SECRETS__PREVIOUS_MASTER_KEYS[{i}]")
        for i, text in enumerate(settings.secrets.previous_master_keys)
    ]
