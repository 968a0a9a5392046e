"""The head sampler: the standard `OTEL_TRACES_SAMPLER` / `_ARG`, defaults, failovers kept."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from app.config import TelemetrySettings
from app.telemetry.setup import SERVE_SAMPLE_RATIO, head_sampler
from app.telemetry.spans import FAILOVER_ATTRIBUTE

EXPORTING = TelemetrySettings(otlp_endpoint="http://127.0.0.1:4318")
SILENT = TelemetrySettings()
TRACE_IDS = range(1, 2**64, 2**64 // 2_000)  # 2,000 ids spread over the ratio's 64 bits


def sampled_share(sampler_env: dict[str, str], settings: TelemetrySettings = EXPORTING) -> float:
    sampler = head_sampler(settings, sampler_env)
    kept = [
        sampler.should_sample(None, trace_id, "POST /v1/chat").decision.is_sampled()
        for trace_id in TRACE_IDS
    ]
    return sum(kept) / len(kept)


def test_the_serve_default_samples_its_ratio_of_root_traces() -> None:
    assert sampled_share({}) == pytest.approx(SERVE_SAMPLE_RATIO, abs=0.01)


def test_nothing_is_recorded_when_nothing_is_exported() -> None:
    assert sampled_share({}, SILENT) == 0.0


@pytest.mark.parametrize(
    ("name", "argument", "share"),
    [
        ("always_on", "", 1.0),
        ("parentbased_always_on", "", 1.0),
        ("always_off", "", 0.0),
        ("parentbased_always_off", "", 0.0),
        ("traceidratio", "0.25", 0.25),
        ("PARENTBASED_TRACEIDRATIO", " 0.5 ", 0.5),
        ("parentbased_traceidratio", "", 1.0),  # the specification's default argument
    ],
)
def test_the_standard_variables_choose_the_sampler(name: str, argument: str, share: float) -> None:
    env = {"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": argument}
    assert sampled_share(env) == pytest.approx(share, abs=0.01)
    assert sampled_share(env, SILENT) == pytest.approx(share, abs=0.01)  # explicit wins


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "is not one of"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "not a number",
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "between"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        head_sampler(EXPORTING, env)


def test_the_default_follows_a_sampled_parent_and_a_dropped_one() -> None:
    sampler = head_sampler(EXPORTING, {})
    for flags, expected in ((TraceFlags.SAMPLED, True), (TraceFlags.DEFAULT, False)):
        parent = NonRecordingSpan(
            SpanContext(2**100, 7, is_remote=True, trace_flags=TraceFlags(flags))
        )
        context = trace.set_span_in_context(parent)
        result = sampler.should_sample(context, 2**100, "POST /v1/chat")
        assert result.decision.is_sampled() is expected


def test_a_failover_attempt_is_kept_under_any_sampler() -> None:
    dropped = NonRecordingSpan(SpanContext(2**100, 7, is_remote=False))
    context = trace.set_span_in_context(dropped)
    for env in ({}, {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}):
        sampler = head_sampler(EXPORTING, env)
        plain = sampler.should_sample(context, 2**100, "chat gpt-4o", attributes={"a": 1})
        assert plain.decision is Decision.DROP
        failover = sampler.should_sample(
            context, 2**100, "chat gpt-4o", attributes={FAILOVER_ATTRIBUTE: "timeout"}
        )
        assert failover.decision is Decision.RECORD_AND_SAMPLE
        assert failover.attributes[FAILOVER_ATTRIBUTE] == "timeout"
