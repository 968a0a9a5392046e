"""Span helpers: every span Bulkhead writes carries the tenant, user and credential.

Unsampled requests pay next to nothing: under a parent span the head sampler dropped, these
helpers start no span and build no attributes; they hand back the parent itself (not
recording, so every `set_attribute` and `end` on it is a no-op), whose context still holds
the request's trace id for audit rows, usage rows and logs. That is what the SDK's
parent-based samplers would decide anyway, minus the cost of asking them.

One exception: a span started with `bulkhead.failover.reason` is always offered to the
sampler, which keeps it (`app/telemetry/setup.py`), so a failover can be found in any trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from app.tenancy.scope import TenantScope

_tracer = trace.get_tracer("bulkhead")

FAILOVER_ATTRIBUTE = "bulkhead.failover.reason"
"""Set on the first attempt span of the next chain entry; such spans are always sampled."""

Attributes = Mapping[str, AttributeValue]


def unsampled_parent(context: Context | None = None) -> Span | None:
    """The current span when it is one the sampler dropped (its children are dropped too).

    None when a span started here may be recorded: the parent is sampled, or there is no
    parent at all (a root span, which the sampler decides on).
    """
    parent = trace.get_current_span(context)
    parent_context = parent.get_span_context()
    if parent_context.is_valid and not parent_context.trace_flags.sampled:
        return parent
    return None


def start_span(
    name: str,
    *,
    attributes: Callable[[], Attributes],
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Span:
    """Start a span whose `attributes()` are built only if it can be recorded.

    Under an unsampled parent, the parent is returned instead (see the module docstring).
    """
    skipped = unsampled_parent(context)
    if skipped is not None:
        return skipped
    return _tracer.start_span(name, context=context, kind=kind, attributes=attributes())


@contextmanager
def scoped_span(
    name: str,
    *,
    scope: TenantScope,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """Start a child span attributed to `scope` (tenant, pseudonymous user, credential)."""
    skipped = unsampled_parent()
    if skipped is not None:
        yield skipped
        return
    # Attributes at start: one cleaning pass, no lock per `set_attributes` (on every search).
    initial: dict[str, AttributeValue] = {**scope.span_attributes(), **(attributes or {})}
    with _tracer.start_as_current_span(name, kind=kind, attributes=initial) as span:
        yield span


def current_trace_id() -> str:
    """The current trace id as 32 hex digits (all zeros outside a span)."""
    return format(trace.get_current_span().get_span_context().trace_id, "032x")
