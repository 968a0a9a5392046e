"""Span export that scrubs secrets: the last line before spans leave the process.

The provider layer scrubs SDK errors before it records them; this exporter wrapper catches
whatever still carries a registered secret value or a credential-shaped string (attribute
values, event attributes such as `exception.message`, the status description).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from app.secrets.scrub import scrub


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, tuple | list):
        return tuple(_scrub_value(item) for item in value)
    return value


def _scrub_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: _scrub_value(value) for key, value in (attributes or {}).items()}


def scrub_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with every string attribute, event attribute and status scrubbed."""
    status = span.status
    if status.description:
        status = Status(status.status_code, scrub(status.description))
    return ReadableSpan(
        name=scrub(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_scrub_attributes(span.attributes),
        events=[
            Event(e.name, _scrub_attributes(e.attributes), timestamp=e.timestamp)
            for e in span.events
        ],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingSpanExporter(SpanExporter):
    """Wraps an exporter; spans are scrubbed on their way to it."""

    def __init__(self, wrapped: SpanExporter) -> None:
        self._wrapped = wrapped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Scrub, then export through the wrapped exporter."""
        return self._wrapped.export([scrub_span(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self._wrapped.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the wrapped exporter."""
        return self._wrapped.force_flush(timeout_millis)
