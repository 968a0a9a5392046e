"""Spans leaving the process carry no secret values, whatever code put them there."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from app.secrets.scrub import forget_registered_secrets, register_secret
from app.secrets.values import SecretValue
from app.telemetry.scrubbing import ScrubbingSpanExporter

KEY = "sk-proj-spancanary0123456789"
PLAIN = "plain-span-canary-4711"


def test_attributes_events_and_status_are_scrubbed_on_export() -> None:
    register_secret(SecretValue(PLAIN))
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(memory)))
    tracer = provider.get_tracer("test")
    try:
        with tracer.start_as_current_span("chat openai") as span:
            span.set_attribute("error.detail", f"Incorrect API key provided: {KEY}")
            span.set_attribute("bulkhead.values", [PLAIN, "ok"])
            span.set_attribute("gen_ai.usage.input_tokens", 12)
            span.record_exception(PermissionError(f"401 for {PLAIN}"))
            span.set_status(Status(StatusCode.ERROR, f"rejected {KEY}"))
        exported = memory.get_finished_spans()
        text = "".join(s.to_json() for s in exported)
        assert KEY not in text
        assert PLAIN not in text
        assert exported[0].attributes is not None
        assert exported[0].attributes["gen_ai.usage.input_tokens"] == 12
        assert exported[0].events[0].name == "exception"
        assert "[REDACTED]" in text
    finally:
        provider.shutdown()
        forget_registered_secrets()
