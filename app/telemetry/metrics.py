"""Meter provider: one per process, exporting OTLP/HTTP metrics when an endpoint is configured.

Counters such as `bulkhead.auth.failures` are created against the API's global meter; until a
provider is installed they cost nothing and record nothing.
"""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from app.config import TelemetrySettings


def configure_metrics(settings: TelemetrySettings) -> None:
    """Install an exporting meter provider, unless none is wanted or one is already installed."""
    if not settings.otlp_endpoint or isinstance(metrics.get_meter_provider(), MeterProvider):
        return
    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/metrics"
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint))
    metrics.set_meter_provider(
        MeterProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            metric_readers=[reader],
        )
    )
