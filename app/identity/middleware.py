"""Authentication middleware: every non-public route gets a verified TenantScope or a 401."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp
from opentelemetry import trace

from app.identity.tokens import JwtVerifier
from app.problems import Unauthenticated


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    """Turns `Authorization: Bearer <jwt>` into a TenantScope (`request.user`)."""

    def __init__(self, app: ASGIApp, *, exclude: list[str], max_header_bytes: int) -> None:
        super().__init__(app, exclude=exclude)
        self.max_header_bytes = max_header_bytes

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Verify the bearer token and attribute the request's span to its tenant.

        Raises:
            Unauthenticated: Missing, oversize, malformed or invalid credential.
        """
        verifier: JwtVerifier = connection.app.state.verifier
        header = connection.headers.get("authorization")
        if header is None:
            raise Unauthenticated("missing Authorization header", reason="missing")
        if len(header) > self.max_header_bytes:
            raise Unauthenticated("Authorization header too large", reason="oversize")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise Unauthenticated("expected 'Authorization: Bearer <token>'", reason="malformed")
        scope = await verifier.verify(token)
        trace.get_current_span().set_attributes(scope.span_attributes())
        return AuthenticationResult(user=scope, auth=scope.credential_id)
