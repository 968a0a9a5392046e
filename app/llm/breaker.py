"""Circuit breakers per (tenant, provider, model), and endpoint.

Keyed by tenant as well as model so that one tenant's exhausted or revoked key opens only
that tenant's circuit: another tenant calling the same model with its own key is unaffected.
The endpoint (base URL) is part of the key too: a chain may list the same model twice, at
two endpoints (a proxy, then the provider itself), and a dead first one must not cut off the
second.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    """Closed: calls flow. Open: calls are refused. Half-open: one probe call at a time."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a circuit opens and for how long."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    open_seconds: float = 30.0


class CircuitBreaker:
    """Opens on N consecutive failures or a failure rate over a window; probes when half-open."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=policy.window)
        self._opened_at = 0.0
        self._probing = False

    def allow(self, now: float | None = None) -> bool:
        """Whether a call may go out now (taking the half-open probe slot if so)."""
        if self.state is BreakerState.CLOSED:
            return True
        now = time.monotonic() if now is None else now
        if self.state is BreakerState.OPEN:
            if now < self._opened_at + self._policy.open_seconds:
                return False
            self.state = BreakerState.HALF_OPEN
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_in(self, now: float | None = None) -> float:
        """Seconds until the circuit lets a probe through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self._opened_at + self._policy.open_seconds - now)

    def success(self) -> None:
        """Record a successful call; a half-open circuit closes."""
        self._probing = False
        self._consecutive = 0
        self._outcomes.append(True)
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self._outcomes.clear()

    def failure(self, now: float | None = None, *, late: bool = False) -> None:
        """Record a failed call; opens the circuit when a threshold is crossed.

        A `late` failure (a plain call another entry beat to the answer: a long answer or a
        dead provider, nobody can tell) counts towards the failure rate only, not towards the
        consecutive failures: a provider is cut off for being late only when most of its
        recent calls were.
        """
        self._probing = False
        if not late:
            self._consecutive += 1
        self._outcomes.append(False)
        failures = self._outcomes.count(False)
        over_rate = (
            len(self._outcomes) >= self._policy.min_calls
            and failures / len(self._outcomes) >= self._policy.failure_rate
        )
        if (
            self.state is BreakerState.HALF_OPEN
            or self._consecutive >= self._policy.consecutive_failures
            or over_rate
        ):
            self.state = BreakerState.OPEN
            self._opened_at = time.monotonic() if now is None else now

    def release(self) -> None:
        """Give back a probe slot whose call ended without a verdict (cancelled, caller error)."""
        self._probing = False


class BreakerRegistry:
    """The process's breakers, one per (tenant, provider, model)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._breakers: dict[tuple[str, str, str, str], CircuitBreaker] = {}

    def get(
        self, tenant_id: str, provider: str, model: str, endpoint: str | None = None
    ) -> CircuitBreaker:
        """The breaker for this tenant's use of `provider`/`model` at `endpoint`."""
        key = (tenant_id, provider, model, endpoint or "")
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(self.policy)
        return breaker
