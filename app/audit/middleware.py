"""ASGI middleware that queues one audit row per authenticated request."""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC, datetime

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from app.audit.writer import AuditRow, AuditWriter
from app.telemetry.spans import current_trace_id
from app.tenancy.scope import TenantScope


class AuditMiddleware:
    """Records tenant, principal, credential, route, status, latency and source address.

    The row is queued when the response starts, so a full audit buffer delays the response
    (back-pressure) instead of dropping the row after the client has gone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through, queueing its audit row when the response starts."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        await self._audited(scope, receive, send)

    async def _audited(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        writer: AuditWriter = scope["litestar_app"].state.audit

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                caller = scope.get("user")
                if isinstance(caller, TenantScope):
                    # The auth middleware's resolved address is already parsed: no re-parse.
                    resolved = scope.get("state", {}).get("bulkhead_client_address")
                    client = scope.get("client")
                    source_ip = str(resolved) if resolved else (_ip(client[0]) if client else None)
                    await writer.record(
                        AuditRow(
                            tenant_id=caller.tenant_id,
                            occurred_at=datetime.now(UTC),
                            principal=caller.subject,
                            credential_id=caller.credential_id,
                            method=scope["method"],
                            route=scope.get("path_template") or scope["path"],
                            status=message["status"],
                            latency_ms=(time.perf_counter() - started) * 1000,
                            source_ip=source_ip,
                            trace_id=current_trace_id(),
                        )
                    )
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _ip(host: str) -> str | None:
    """The peer address when it is one (ASGI servers may report a socket path or a name)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
