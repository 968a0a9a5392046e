"""Authentication middleware: every non-public route gets a verified TenantScope or a refusal.

Routing and the public/protected decision use the ASGI path only (never the Host header), and
every refusal is counted and logged with its reason code, never with the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp
from opentelemetry import trace

from app.audit.failures import AuthFailure, AuthFailureLog
from app.identity.api_keys import parse_key
from app.identity.authenticator import Authenticator
from app.identity.network import ClientAddressResolver
from app.problems import CredentialRefused, Unauthenticated
from app.telemetry.spans import current_trace_id

CLIENT_ADDRESS_STATE = "bulkhead_client_address"
_SAFE_KID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    """Turns `Authorization: Bearer <credential>` into a TenantScope (`request.user`)."""

    def __init__(self, app: ASGIApp, *, exclude: list[str], max_header_bytes: int) -> None:
        super().__init__(app, exclude=exclude)
        self.max_header_bytes = max_header_bytes

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Verify the bearer credential and attribute the request's span to its tenant.

        Raises:
            Unauthenticated: Missing, oversize, malformed or invalid credential.
            CredentialRefused: Valid credential refused by tenant or key policy.
        """
        state = connection.app.state
        authenticator: Authenticator = state.authenticator
        resolver: ClientAddressResolver = state.client_addresses
        client = resolver.resolve(connection.scope)
        # The audit trail records this address too, not the proxy's.
        connection.scope.setdefault("state", {})[CLIENT_ADDRESS_STATE] = client
        token = ""
        try:
            header = connection.headers.get("authorization")
            if header is None:
                raise Unauthenticated("missing Authorization header", reason="missing")
            if len(header) > self.max_header_bytes:
                raise Unauthenticated("Authorization header too large", reason="oversize")
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or " " in token:
                raise Unauthenticated(
                    "expected 'Authorization: Bearer <token>'", reason="malformed"
                )
            scope = await authenticator.authenticate(token, client=client)
        except (Unauthenticated, CredentialRefused) as exc:
            failures: AuthFailureLog = state.auth_failures
            failures.record(
                AuthFailure(
                    occurred_at=datetime.now(UTC),
                    tenant_id=exc.tenant_id,
                    reason=exc.reason,
                    credential_id=_credential_hint(token),
                    method=str(connection.scope.get("method", "")),
                    route=connection.scope.get("path_template") or connection.scope["path"][:200],
                    source_ip=str(client) if client else None,
                    trace_id=current_trace_id(),
                )
            )
            trace.get_current_span().set_attribute("bulkhead.auth.failure", exc.reason)
            raise
        trace.get_current_span().set_attributes(scope.span_attributes())
        return AuthenticationResult(user=scope, auth=scope.credential_id)


def _credential_hint(token: str) -> str | None:
    """A key id or kid that names the credential without revealing it (never the token)."""
    if not token:
        return None
    parsed = parse_key(token)
    if parsed is not None:
        return f"apikey:{parsed[0]}"
    head = token.split(".", 1)[0]
    if len(head) > 512:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    if isinstance(kid, str) and _SAFE_KID.fullmatch(kid):
        return f"jwt:{kid}"
    return None
