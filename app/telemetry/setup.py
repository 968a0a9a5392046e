"""Tracer and meter providers: one each per process, exporting OTLP/HTTP when configured."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from app.config import TelemetrySettings
from app.telemetry.scrubbing import ScrubbingSpanExporter
from app.telemetry.spans import FAILOVER_ATTRIBUTE

# HTTP clients that log one INFO line per request they send (the provider SDKs' httpx2, and
# httpx): every provider call would cost a log record and a wake-up of the log thread. The
# call is on the `chat` span (and its outcome in the usage row) instead.
PER_REQUEST_LOGGERS = ("httpx", "httpx2")


def quiet_per_request_loggers() -> None:
    """Raise the HTTP clients' loggers to WARNING: their failures still show, not every call."""
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


SERVE_SAMPLE_RATIO = 0.1
"""Share of traces `bulkhead serve` records when exporting and `OTEL_TRACES_SAMPLER` is unset."""

_SAMPLERS: dict[str, Callable[[float], Sampler]] = {
    "always_on": lambda _: sampling.ALWAYS_ON,
    "always_off": lambda _: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda _: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda _: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio,
}
"""The specification's sampler names for `OTEL_TRACES_SAMPLER`."""


class KeepFailovers(Sampler):
    """Samples every span that starts with `bulkhead.failover.reason`; the rest as `delegate`.

    A failover is rare and always worth a look: its attempt span is exported even from a
    trace the head sampler dropped (the trace's other spans are not; the trace id still
    finds the request's audit and usage rows).
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """RECORD_AND_SAMPLE for a failover attempt, else the delegate's decision."""
        if attributes and FAILOVER_ATTRIBUTE in attributes:
            parent = trace.get_current_span(parent_context).get_span_context()
            state = parent.trace_state if parent.is_valid else trace_state
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        """As the SDK's samplers describe themselves."""
        return f"KeepFailovers{{{self.delegate.get_description()}}}"


def head_sampler(settings: TelemetrySettings, environ: Mapping[str, str]) -> Sampler:
    """The head sampler: `OTEL_TRACES_SAMPLER` / `_ARG` when set, else Bulkhead's default.

    The default records nothing when nothing is exported (trace ids are still made and
    propagated, for logs, audit and usage rows), else `parentbased_traceidratio` at
    `SERVE_SAMPLE_RATIO`; `bulkhead dev` sets `OTEL_TRACES_SAMPLER=parentbased_always_on`
    unless it is set. Failover attempts are always kept (`KeepFailovers`).

    Raises:
        ValueError: An unknown sampler name or a ratio outside [0, 1].
    """
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        if not settings.otlp_endpoint:
            return KeepFailovers(sampling.ALWAYS_OFF)
        return KeepFailovers(sampling.ParentBasedTraceIdRatio(SERVE_SAMPLE_RATIO))
    if name not in _SAMPLERS:
        known = ", ".join(_SAMPLERS)
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r} is not one of: {known}")
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(argument) if argument else 1.0
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={argument!r} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={argument!r} is not between 0 and 1")
    return KeepFailovers(_SAMPLERS[name](ratio))


def configure_tracing(settings: TelemetrySettings) -> TracerProvider:
    """Install the process's tracer provider (once) and return it.

    An SDK provider already installed (by a test harness, or an earlier app in the same
    process) is kept: OpenTelemetry allows one global provider per process.

    Raises:
        ValueError: `OTEL_TRACES_SAMPLER` or its argument is not valid.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(
        sampler=head_sampler(settings, os.environ),
        resource=Resource.create({"service.name": settings.service_name}),
    )
    if settings.otlp_endpoint:
        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        exporter = ScrubbingSpanExporter(OTLPSpanExporter(endpoint=endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def configure_metrics(settings: TelemetrySettings) -> None:
    """Install the process's meter provider (once) when an OTLP endpoint is configured.

    The GenAI client metrics (token usage, operation duration) and the failover counter are
    recorded through it. As with tracing, a provider already installed is kept.
    """
    if isinstance(metrics.get_meter_provider(), MeterProvider):
        return
    if not settings.otlp_endpoint:
        # Nothing would ever read them: an SDK provider without a reader still aggregates
        # every measurement (the ASGI middleware records two per request, ~3% of a search).
        # The API's no-op provider stays in place, so instruments cost next to nothing.
        return
    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/metrics"
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint))
    resource = Resource.create({"service.name": settings.service_name})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
