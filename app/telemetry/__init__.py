"""Telemetry: tracer provider set-up, span helpers carrying tenant attribution."""
