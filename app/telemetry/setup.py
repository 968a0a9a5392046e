"""Tracer provider: one per process, exporting OTLP/HTTP when an endpoint is configured."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from app.config import TelemetrySettings
from app.telemetry.scrubbing import ScrubbingSpanExporter


def configure_tracing(settings: TelemetrySettings) -> TracerProvider:
    """Install the process's tracer provider (once) and return it.

    An SDK provider already installed (by a test harness, or an earlier app in the same
    process) is kept: OpenTelemetry allows one global provider per process.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if settings.otlp_endpoint:
        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        exporter = ScrubbingSpanExporter(OTLPSpanExporter(endpoint=endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider
