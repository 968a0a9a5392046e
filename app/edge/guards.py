"""Route guards: one per role, and the dependency that hands controllers their TenantScope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.problems import Forbidden, TenantMismatch
from app.tenancy.scope import Role, TenantScope

# Guards are async on purpose: Litestar runs a sync guard in a worker thread, a hop that cost
# more than the rest of the guard work on every request (measured with py-spy under load).
Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def requires(role: Role) -> Guard:
    """A guard admitting only credentials that carry `role`."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        scope = connection.user
        if not isinstance(scope, TenantScope) or not scope.has(role):
            raise Forbidden(f"this operation requires the {role.value!r} role")

    guard.__name__ = f"requires_{role.value}"
    return guard


TENANT_HEADER = "x-tenant-id"


async def tenant_header_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """App-wide guard: an `X-Tenant-ID` header may only repeat the credential's own tenant.

    A guard rather than middleware, so the refusal is rendered inside the route and the audit
    trail records it under the caller's tenant.

    Raises:
        TenantMismatch: The header names another tenant.
    """
    scope = connection.scope.get("user")
    if isinstance(scope, TenantScope):
        ensure_own_tenant(scope, connection.headers.get(TENANT_HEADER))


def provide_scope(request: Request[TenantScope, Any, Any]) -> TenantScope:
    """The caller's scope, as the authentication middleware verified it.

    Synchronous and provided with `sync_to_thread=False`: with no async dependency left,
    Litestar resolves a handler's dependencies without spawning a task group per request.
    """
    return request.user


def ensure_own_tenant(scope: TenantScope, named: str | None) -> None:
    """Refuse a request body that names a tenant other than the credential's.

    A body may repeat its own tenant id as an assertion; it can never choose one.

    Raises:
        TenantMismatch: `named` is set and differs from the caller's tenant.
    """
    if named is not None and named != scope.tenant_id:
        raise TenantMismatch("the request names another tenant")
