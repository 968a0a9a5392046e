"""CircuitBreaker: thresholds, half-open probing, per-tenant keys."""

from __future__ import annotations

from app.llm.breaker import BreakerPolicy, BreakerRegistry, BreakerState, CircuitBreaker

POLICY = BreakerPolicy(
    consecutive_failures=3, failure_rate=0.5, window=10, min_calls=6, open_seconds=10
)


def test_opens_after_consecutive_failures_and_refuses_calls() -> None:
    breaker = CircuitBreaker(POLICY)
    for _ in range(2):
        breaker.failure(now=0)
    assert breaker.allow(now=0)
    breaker.failure(now=0)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(now=5)
    assert breaker.retry_in(now=5) == 5


def test_opens_on_failure_rate_without_a_streak() -> None:
    breaker = CircuitBreaker(POLICY)
    for _ in range(3):
        breaker.success()
        breaker.failure(now=0)
    assert breaker.state is BreakerState.OPEN, "3 of 6 failed: 50%"


def test_late_failures_count_towards_the_rate_not_the_streak() -> None:
    """A plain call beaten by a hedge may have been a long answer: no streak, only the rate."""
    breaker = CircuitBreaker(POLICY)
    for _ in range(POLICY.consecutive_failures):
        breaker.failure(now=0, late=True)
    assert breaker.state is BreakerState.CLOSED, "late calls in a row are no streak"
    breaker.failure(now=0)
    assert breaker.state is BreakerState.CLOSED, "nor do they lengthen one"
    for _ in range(POLICY.min_calls - POLICY.consecutive_failures - 1):
        breaker.failure(now=0, late=True)
    assert breaker.state is BreakerState.OPEN, "but a window of late calls opens the circuit"


def test_late_failures_below_the_rate_leave_it_closed() -> None:
    breaker = CircuitBreaker(POLICY)
    for _ in range(POLICY.window):
        breaker.success()
        breaker.success()
        breaker.failure(now=0, late=True)
    assert breaker.state is BreakerState.CLOSED, "one in three late: slow, not dead"


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    breaker = CircuitBreaker(POLICY)
    for _ in range(3):
        breaker.failure(now=0)
    assert breaker.allow(now=10)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(now=10), "one probe at a time"
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(now=10)


def test_failed_probe_reopens_and_abandoned_probe_frees_the_slot() -> None:
    breaker = CircuitBreaker(POLICY)
    for _ in range(3):
        breaker.failure(now=0)
    assert breaker.allow(now=10)
    breaker.failure(now=10)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(now=15)
    assert breaker.allow(now=20)
    breaker.release()
    assert breaker.allow(now=20), "a probe that ended without a verdict gives its slot back"


def test_registry_keeps_tenants_and_endpoints_apart() -> None:
    registry = BreakerRegistry(POLICY)
    exhausted = registry.get("acme", "openai", "gpt-4o-mini")
    for _ in range(3):
        exhausted.failure(now=0)
    assert registry.get("acme", "openai", "gpt-4o-mini") is exhausted
    assert registry.get("globex", "openai", "gpt-4o-mini").allow(now=0)
    assert registry.get("acme", "openai", "gpt-4o-mini", "https://proxy.example").allow(now=0)
