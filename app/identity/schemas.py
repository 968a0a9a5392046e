"""Request and response bodies of the identity endpoints."""

from __future__ import annotations

from datetime import datetime

import msgspec


class CreateApiKey(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/admin/api-keys`."""

    name: str
    scopes: list[str]
    expires_at: datetime | None = None
    allowed_cidrs: list[str] = []


class RotateApiKey(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/admin/api-keys/{id}/rotate`: how long the old key keeps working."""

    grace_seconds: int = 3600


class ApiKeyOut(msgspec.Struct):
    """A key as listed (never its secret)."""

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


class ApiKeyCreated(msgspec.Struct):
    """A new key; `key` is shown this once and cannot be retrieved again."""

    key: str
    api_key: ApiKeyOut


class ApiKeyRotated(msgspec.Struct):
    """The successor (with its plaintext, once) and the old key with its grace-period end."""

    key: str
    api_key: ApiKeyOut
    previous: ApiKeyOut


class ApiKeyList(msgspec.Struct):
    """`GET /v1/admin/api-keys`."""

    api_keys: list[ApiKeyOut]


class TokenResponse(msgspec.Struct):
    """`POST /v1/auth/token` (RFC 6749 field names)."""

    access_token: str
    token_type: str
    expires_in: int
