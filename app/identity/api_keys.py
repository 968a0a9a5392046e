"""Service API keys: format, peppered hashing, and the tenant-scoped admin operations.

A key reads `bk_<key id>_<secret>`: 16 hex characters of key id (the row's primary key, safe to
log) and 32 random bytes (256 bits) of secret, base64url. Only HMAC-SHA256(pepper, secret) is
stored; the pepper lives with the service, not the database, so a dump of `api_keys` alone
cannot be brute-forced or replayed. The plaintext is returned once, at creation or rotation.

Every write sends `NOTIFY bulkhead_credentials, '<key id>'` in the same transaction, so each
replica drops its cached copy of the key the moment the change commits.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.db.pool import Connection
from app.identity.network import parse_networks
from app.problems import NotFound, ValidationFailed
from app.tenancy.scope import Role

PREFIX = "bk_"
CHANNEL = "bulkhead_credentials"
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}")
MAX_GRACE_SECONDS = 7 * 24 * 3600


def derive_pepper(master_key: bytes) -> bytes:
    """A pepper for API key HMACs, derived from the master key when none is configured."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"bulkhead/api-key-pepper/v1"
    ).derive(master_key)


class ApiKeyHasher:
    """HMAC-SHA256 of key secrets under the server-side pepper."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 32:
            raise ValueError("the API key pepper must be at least 32 bytes")
        self._pepper = pepper

    def digest(self, secret: str) -> bytes:
        """The stored form of `secret`."""
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()

    def matches(self, secret: str, stored: bytes) -> bool:
        """Constant-time comparison of `secret` with a stored digest."""
        return hmac.compare_digest(self.digest(secret), stored)


def parse_key(token: str) -> tuple[str, str] | None:
    """Split `bk_<id>_<secret>` into (key id, secret), or None when it is not well formed."""
    if not token.startswith(PREFIX):
        return None
    key_id, _, secret = token[len(PREFIX) :].partition("_")
    if not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


def _new_key() -> tuple[str, str, str]:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{PREFIX}{key_id}_{secret}"


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What the admin API shows about a key (never its secret or digest)."""

    id: str
    name: str
    scopes: list[str]
    allowed_cidrs: list[str]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    replaced_by: str | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKeyInfo:
        """Build from an `api_keys` row."""
        return cls(
            id=row["id"],
            name=row["name"],
            scopes=list(row["scopes"]),
            allowed_cidrs=[str(c) for c in row["allowed_cidrs"]],
            created_by=row["created_by"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
            replaced_by=row["replaced_by"],
        )


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: its plaintext is shown to the caller once and never stored."""

    info: ApiKeyInfo
    key: str


_COLUMNS = (
    "id, name, scopes, allowed_cidrs, created_by, created_at, expires_at, revoked_at,"
    " last_used_at, replaced_by"
)


def _validate(name: str, scopes: list[str], allowed_cidrs: list[str]) -> list[str]:
    if not _NAME.fullmatch(name):
        raise ValidationFailed("name: 1-80 characters of letters, digits, space, '.', '_', '-'")
    known = {role.value for role in Role}
    if not scopes or not set(scopes) <= known:
        raise ValidationFailed(f"scopes: a non-empty subset of {sorted(known)}")
    try:
        return [str(net) for net in parse_networks(allowed_cidrs)]
    except ValueError as exc:
        raise ValidationFailed(f"allowed_cidrs: {exc}") from exc


async def _notify(connection: Connection, key_id: str) -> None:
    await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, key_id)


async def create_key(
    connection: Connection,
    *,
    tenant_id: str,
    hasher: ApiKeyHasher,
    name: str,
    scopes: list[str],
    created_by: str,
    expires_at: datetime | None = None,
    allowed_cidrs: list[str] | None = None,
) -> CreatedKey:
    """Create a key for `tenant_id`; the connection must have RLS armed for that tenant.

    Raises:
        ValidationFailed: Bad name, scopes, CIDRs or an expiry in the past.
    """
    cidrs = _validate(name, scopes, allowed_cidrs or [])
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise ValidationFailed("expires_at: must be in the future")
    key_id, secret, plaintext = _new_key()
    row = await connection.fetchrow(
        f"""
        INSERT INTO api_keys (id, tenant_id, name, secret_hmac, scopes, allowed_cidrs,
                              created_by, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6::cidr[], $7, $8)
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - _COLUMNS is a constant
        key_id,
        tenant_id,
        name,
        hasher.digest(secret),
        sorted(set(scopes)),
        cidrs,
        created_by,
        expires_at,
    )
    return CreatedKey(info=ApiKeyInfo.from_row(row), key=plaintext)


async def list_keys(connection: Connection, *, tenant_id: str) -> list[ApiKeyInfo]:
    """Every key of the tenant, newest first (revoked and expired ones included)."""
    rows = await connection.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = $1"  # noqa: S608 - constant
        " ORDER BY created_at DESC, id",
        tenant_id,
    )
    return [ApiKeyInfo.from_row(row) for row in rows]


async def rotate_key(
    connection: Connection,
    *,
    tenant_id: str,
    hasher: ApiKeyHasher,
    key_id: str,
    grace_seconds: int,
    created_by: str,
) -> tuple[CreatedKey, ApiKeyInfo]:
    """Issue a successor key; the old one keeps working for `grace_seconds` more.

    The successor has the same name, scopes, CIDRs and expiry. The old key's expiry becomes the
    end of the grace period (never later than it already was).

    Returns:
        The new key (plaintext shown once) and the old key as it now stands.

    Raises:
        NotFound: No live key by that id in the tenant.
        ValidationFailed: Grace period out of range.
    """
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise ValidationFailed(f"grace_seconds: 0 to {MAX_GRACE_SECONDS}")
    async with connection.transaction():
        old = await connection.fetchrow(
            "SELECT name, scopes, allowed_cidrs, expires_at FROM api_keys"
            " WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL"
            " AND replaced_by IS NULL AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE",
            tenant_id,
            key_id,
        )
        if old is None:
            raise NotFound("no active API key with that id")
        created = await create_key(
            connection,
            tenant_id=tenant_id,
            hasher=hasher,
            name=old["name"],
            scopes=list(old["scopes"]),
            created_by=created_by,
            expires_at=old["expires_at"],
            allowed_cidrs=[str(c) for c in old["allowed_cidrs"]],
        )
        grace_end = datetime.now(UTC) + timedelta(seconds=grace_seconds)
        if old["expires_at"] is not None:
            grace_end = min(grace_end, old["expires_at"])
        updated = await connection.fetchrow(
            f"UPDATE api_keys SET expires_at = $3, replaced_by = $4"  # noqa: S608 - constant
            f" WHERE tenant_id = $1 AND id = $2 RETURNING {_COLUMNS}",
            tenant_id,
            key_id,
            grace_end,
            created.info.id,
        )
        await _notify(connection, key_id)
    return created, ApiKeyInfo.from_row(updated)


async def revoke_key(connection: Connection, *, tenant_id: str, key_id: str) -> None:
    """Revoke a key at once, on every replica.

    Raises:
        NotFound: No key by that id in the tenant (another tenant's id looks the same).
    """
    async with connection.transaction():
        found = await connection.fetchval(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE tenant_id = $1 AND id = $2 RETURNING id",
            tenant_id,
            key_id,
        )
        if found is None:
            raise NotFound("no API key with that id")
        await _notify(connection, key_id)
