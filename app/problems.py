"""The problem types: every error the service means a client to see, with its stable code.

An `ApiError` carries the RFC 9457 fields (status, code, title, detail, the offending fields in
`errors`); any layer may raise one. How they are rendered as `application/problem+json`, and
how Litestar's own exceptions and unexpected errors are mapped onto the same codes, is the
edge's (`app.edge.handlers`). Messages are written for the caller and never carry secret
values or raw tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error with a stable code that the client is meant to see."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})


class Unauthenticated(ApiError):
    """No valid credential."""

    status, code, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, detail: str, *, reason: str, tenant_id: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="bulkhead"'})
        self.reason = reason
        self.tenant_id = tenant_id


class Forbidden(ApiError):
    """A valid credential without the right to do this."""

    status, code, title = 403, "forbidden", "Forbidden"


class CredentialRefused(Forbidden):
    """A valid credential refused at authentication (disabled tenant, network policy)."""

    def __init__(self, detail: str, *, reason: str, tenant_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.tenant_id = tenant_id


class TenantMismatch(ApiError):
    """The request named a tenant other than the credential's."""

    status, code, title = 403, "tenant_mismatch", "Tenant mismatch"


class NotFound(ApiError):
    """Nothing by that id in the caller's tenant (other tenants' ids look the same)."""

    status, code, title = 404, "not_found", "Not found"


class ValidationFailed(ApiError):
    """Input that breaks a documented rule."""

    status, code, title = 422, "validation_error", "Validation error"


class PayloadTooLarge(ApiError):
    """Input over a documented size limit."""

    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(ApiError):
    """A body or file in a format the endpoint does not take."""

    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class ServiceUnavailable(ApiError):
    """A dependency is down; the client may retry."""

    status, code, title = 503, "unavailable", "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """Postgres is stopped, restarting or refusing connections; retry after `retry_after` s."""

    code, title = "database_unavailable", "Database unavailable"

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(
            "the database is unavailable; retry later", headers={"Retry-After": str(retry_after)}
        )
