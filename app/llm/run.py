"""One request's way through a chain: deadline, attempt count, spans, metrics, outcomes.

Every attempt is a `chat {model}` span (OTel GenAI conventions) under one `chat chain` span,
attributed to the tenant; durations, token usage and failovers go to the GenAI metrics.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.llm.breaker import CircuitBreaker
from app.llm.links import ChainLink
from app.llm.policy import ChainPolicy
from app.llm.provider import Completion, CompletionRequest, ProviderError
from app.llm.remote import build_prompt
from app.problems import ApiError
from app.telemetry.spans import FAILOVER_ATTRIBUTE, start_span
from app.tenancy.scope import TenantScope

_tracer = trace.get_tracer("bulkhead")
_meter = metrics.get_meter("bulkhead")
TOKEN_USAGE = _meter.create_histogram(
    "gen_ai.client.token.usage", unit="{token}", description="Tokens used per LLM call"
)
OPERATION_DURATION = _meter.create_histogram(
    "gen_ai.client.operation.duration", unit="s", description="Duration of one LLM attempt"
)
FAILOVERS = _meter.create_counter(
    "bulkhead.llm.failovers", unit="{failover}", description="Chain entries abandoned, by reason"
)


class ProvidersUnavailable(ApiError):
    """Every provider in the tenant's chain failed."""

    status, code, title = 503, "providers_unavailable", "Providers unavailable"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ProviderRejected(ApiError):
    """The provider refused the request itself (a 400 other than context length)."""

    status, code, title = 502, "provider_rejected_request", "Provider rejected the request"


class StreamInterrupted(ProviderError):
    """The provider broke off after content had reached the caller; no failover is possible."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One entry's part in a request, for the usage ledger: a call, or a skipped entry.

    Attributes:
        outcome: `ok` (it answered), the failure's reason (`timeout`, `rate_limited`...),
            `cancelled` (another entry answered first while it was running) or
            `circuit_open` (skipped: no call was made).
        latency_ms: How long the call took (0 for a skipped entry).
    """

    provider: str
    model: str
    outcome: str
    latency_ms: float


class ChainRun:
    """The state of one request through the chain: deadline, attempt count, spans, ledger.

    `ledger`, when the caller passes a list, receives an `AttemptRecord` per call and per
    skipped entry, in the order they ended.
    """

    def __init__(
        self,
        policy: ChainPolicy,
        scope: TenantScope,
        *,
        stream: bool,
        request: CompletionRequest | None = None,
        ledger: list[AttemptRecord] | None = None,
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.request = request
        self.scope = scope
        self.stream = stream
        self.deadline = time.monotonic() + policy.request_deadline
        self.attempt = 0
        self.failover_reason = ""
        self.retry_hint = 0.0
        self.span = start_span(
            "chat chain",
            attributes=lambda: {**scope.span_attributes(), "gen_ai.request.stream": stream},
        )
        self.context = trace.set_span_in_context(self.span)

    def remaining(self) -> float:
        """Seconds left before the request deadline."""
        return self.deadline - time.monotonic()

    def start_attempt(self, link: ChainLink) -> Span:
        """Count an attempt on `link` and open its `chat {model}` span.

        The first attempt after a failover is offered to the sampler even in an unsampled
        trace: the sampler keeps it (`app/telemetry/setup.py`), so every failover is traced.
        """
        self.attempt += 1
        if self.failover_reason:
            return _tracer.start_span(
                f"chat {link.entry.model}",
                context=self.context,
                kind=SpanKind.CLIENT,
                attributes=self._attempt_attributes(link),
            )
        return start_span(
            f"chat {link.entry.model}",
            context=self.context,
            kind=SpanKind.CLIENT,
            attributes=lambda: self._attempt_attributes(link),
        )

    def _attempt_attributes(self, link: ChainLink) -> dict[str, AttributeValue]:
        endpoint = link.provider.endpoint
        attributes: dict[str, AttributeValue] = {
            **self.scope.span_attributes(),
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": link.entry.provider,
            "gen_ai.request.model": link.entry.model,
            "gen_ai.request.stream": self.stream,
            "server.address": endpoint.address,
            "server.port": endpoint.port,
            "bulkhead.attempt": self.attempt,
        }
        if self.failover_reason:
            attributes[FAILOVER_ATTRIBUTE] = self.failover_reason
        if self.request is not None:
            attributes["gen_ai.input.messages"] = json.dumps(
                [
                    {
                        "role": "user",
                        "parts": [{"type": "text", "content": build_prompt(self.request)}],
                    }
                ]
            )
        return attributes

    def record(self, link: ChainLink, outcome: str, started: float | None) -> float:
        """Put an attempt (or a skip, `started` None) in the ledger; returns its seconds."""
        elapsed = 0.0 if started is None else time.perf_counter() - started
        if self.ledger is not None:
            entry = link.entry
            self.ledger.append(AttemptRecord(entry.provider, entry.model, outcome, elapsed * 1000))
        return elapsed

    def failed(self, span: Span, link: ChainLink, error: ProviderError, started: float) -> None:
        """Close a failed attempt's span and record its duration."""
        span.set_attribute("error.type", error.reason)
        span.set_status(Status(StatusCode.ERROR, f"{error.reason}: {error}"))
        span.end()
        elapsed = self.record(link, error.reason, started)
        OPERATION_DURATION.record(elapsed, _metric_attributes(link, error_type=error.reason))

    def cancelled(self, span: Span, link: ChainLink, started: float) -> None:
        """Close an attempt stopped with no verdict: another entry answered, or the caller left."""
        span.set_attribute("error.type", "cancelled")
        span.end()
        self.record(link, "cancelled", started)

    def succeeded(self, span: Span, link: ChainLink, done: Completion, started: float) -> None:
        """Close the answering attempt's span and the chain span; record duration and usage."""
        if span.is_recording():
            _record_answer(span, done, with_text=self.request is not None)
        span.end()
        attributes = _metric_attributes(link, response_model=done.model)
        OPERATION_DURATION.record(self.record(link, "ok", started), attributes)
        TOKEN_USAGE.record(done.input_tokens, {**attributes, "gen_ai.token.type": "input"})
        TOKEN_USAGE.record(done.output_tokens, {**attributes, "gen_ai.token.type": "output"})
        self.span.set_attribute("bulkhead.attempts", self.attempt)
        self.span.end()

    def fail_over(self, link: ChainLink, reason: str) -> None:
        """Leave `link` for the next entry, counted by reason."""
        self.failover_reason = reason
        FAILOVERS.add(
            1,
            {
                "bulkhead.failover.reason": reason,  # literal: the alert-rule tests read it
                "gen_ai.provider.name": link.entry.provider,
                "gen_ai.request.model": link.entry.model,
            },
        )

    def exhausted(self) -> ProvidersUnavailable:
        """Close the chain span: every entry failed. Returns the error to raise."""
        retry_after = max(1, math.ceil(self.retry_hint or self.policy.unavailable_retry_after))
        self.span.set_attribute("bulkhead.attempts", self.attempt)
        self.span.set_attribute("error.type", "providers_unavailable")
        self.span.set_status(Status(StatusCode.ERROR, self.failover_reason))
        self.span.end()
        return ProvidersUnavailable(
            f"every provider in the tenant's chain failed (last: {self.failover_reason})",
            retry_after=retry_after,
        )

    def abandon(self, kind: str) -> None:
        """Close the chain span when the request ends some other way (`kind`)."""
        if not self.span.is_recording():
            return  # already ended: the answer was complete when the caller let go
        self.span.set_attribute("bulkhead.attempts", self.attempt)
        self.span.set_attribute("error.type", kind)
        self.span.set_status(Status(StatusCode.ERROR, kind))
        self.span.end()


def _record_answer(span: Span, done: Completion, *, with_text: bool) -> None:
    span.set_attributes(
        {
            "gen_ai.response.model": done.model,
            "gen_ai.response.id": done.response_id,
            "gen_ai.usage.input_tokens": done.input_tokens,
            "gen_ai.usage.output_tokens": done.output_tokens,
            "gen_ai.response.finish_reasons": [done.finish_reason],
        }
    )
    if with_text:
        output = [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": done.text}],
                "finish_reason": done.finish_reason,
            }
        ]
        span.set_attribute("gen_ai.output.messages", json.dumps(output))


def _metric_attributes(
    link: ChainLink, *, error_type: str | None = None, response_model: str | None = None
) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": link.entry.provider,
        "gen_ai.request.model": link.entry.model,
        "server.address": link.provider.endpoint.address,
        "server.port": link.provider.endpoint.port,
    }
    if error_type:
        attributes["error.type"] = error_type
    if response_model:
        attributes["gen_ai.response.model"] = response_model
    return attributes


def circuit_open(run: ChainRun, link: ChainLink, breaker: CircuitBreaker | None) -> bool:
    """Whether `link` is skipped because its breaker is open (recorded as a failover)."""
    if breaker is None or breaker.allow():
        return False
    run.span.add_event("circuit_open", {"gen_ai.request.model": link.entry.model})
    run.retry_hint = max(run.retry_hint, breaker.retry_in())
    run.record(link, "circuit_open", None)
    run.fail_over(link, "circuit_open")
    return True


def as_provider_error(exc: BaseException) -> ProviderError:
    """An attempt's failure as a `ProviderError` (an expired attempt timeout is `timeout`)."""
    if isinstance(exc, ProviderError):
        return exc
    return ProviderError("the attempt ran out of time", reason="timeout")
