"""Tracer and meter providers: one each per process, exporting OTLP/HTTP when configured."""

from __future__ import annotations

import logging

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from app.config import TelemetrySettings
from app.telemetry.scrubbing import ScrubbingSpanExporter

# HTTP clients that log one INFO line per request they send (the provider SDKs' httpx2, and
# httpx): every provider call would cost a log record and a wake-up of the log thread. The
# call is on the `chat` span (and its outcome in the usage row) instead.
PER_REQUEST_LOGGERS = ("httpx", "httpx2")


def quiet_per_request_loggers() -> None:
    """Raise the HTTP clients' loggers to WARNING: their failures still show, not every call."""
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


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
