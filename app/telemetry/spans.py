"""Span helpers: every span Bulkhead writes carries the tenant, user and credential."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from app.tenancy.scope import TenantScope

_tracer = trace.get_tracer("bulkhead")


@contextmanager
def scoped_span(
    name: str,
    *,
    scope: TenantScope,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """Start a child span attributed to `scope` (tenant, pseudonymous user, credential)."""
    # Attributes at start: one cleaning pass, no lock per `set_attributes` (on every search).
    initial: dict[str, AttributeValue] = {**scope.span_attributes(), **(attributes or {})}
    with _tracer.start_as_current_span(name, kind=kind, attributes=initial) as span:
        yield span


def current_trace_id() -> str:
    """The current trace id as 32 hex digits (all zeros outside a span)."""
    return format(trace.get_current_span().get_span_context().trace_id, "032x")
