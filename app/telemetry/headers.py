"""`X-Trace-Id` on every response, so a caller can quote the trace to support."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from app.telemetry.spans import current_trace_id

TRACE_HEADER = "X-Trace-Id"


async def add_trace_header(message: Message, scope: Scope) -> None:
    """`before_send` hook: stamp the current trace id on the response start."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)[TRACE_HEADER] = current_trace_id()
