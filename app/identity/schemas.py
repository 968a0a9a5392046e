"""Request and response bodies of the identity endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from app.identity.api_keys import MAX_GRACE_SECONDS

MAX_ALLOWED_CIDRS = 100
"""CIDRs on one key: enough for any real network policy, few enough to check per request."""
Cidr = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class CreateApiKey(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/admin/api-keys`."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    scopes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=4)]
    """Roles the key grants (`chat`, `search`, `ingest`, `admin`)."""
    expires_at: datetime | None = None
    allowed_cidrs: Annotated[list[Cidr], msgspec.Meta(max_length=MAX_ALLOWED_CIDRS)] = []


class RotateApiKey(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/admin/api-keys/{id}/rotate`: how long the old key keeps working."""

    grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_GRACE_SECONDS)] = 3600


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
