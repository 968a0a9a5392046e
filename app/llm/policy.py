"""The rules every provider chain follows: timeouts, retries, breaker thresholds, reasons."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from app.llm.breaker import BreakerPolicy
from app.llm.provider import ProviderError

RETRYABLE = frozenset(
    {
        "rate_limited",
        "server_error",
        "timeout",
        "first_token_timeout",
        "connection_error",
        "stream_interrupted",
        "malformed_response",
    }
)
# An attempt that ran out of time. While another entry remains it is not retried on the same
# entry: a provider that has hung once is likely to hang again, and the retry would spend the
# time the next entry needs.
TIMEOUTS = frozenset({"timeout", "first_token_timeout"})
# Failures that say something about the provider (and so count towards its breaker), as
# opposed to the request (context length, bad request) or our configuration.
BREAKER_FAILURES = RETRYABLE | {"connection_refused", "auth"}


@dataclass(frozen=True, slots=True)
class ChainPolicy:
    """Timeouts, retries and breaker thresholds for every chain (from `LlmSettings`).

    Attributes:
        first_token_timeout: A streamed attempt with no content token by then is abandoned.
        hedge_after: A plain (non-streamed) answer not in by then, counted from the start of
            its entry's turn, starts the next entry alongside it: the first answer wins.
    """

    connect_timeout: float = 2.0
    first_token_timeout: float = 10.0
    hedge_after: float = 10.0
    attempt_timeout: float = 30.0
    request_deadline: float = 60.0
    max_retries: int = 2
    backoff_base: float = 0.2
    backoff_cap: float = 2.0
    retry_after_cap: float = 5.0
    unavailable_retry_after: int = 5
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)


def retry_delay(
    policy: ChainPolicy, error: ProviderError, retries: int, *, remaining: float
) -> float | None:
    """Seconds to wait before retrying after `error`, or None when it must not be retried.

    Full jitter on 429/5xx/timeouts/broken connections; a Retry-After is honoured up to the
    policy's cap (a longer one is not waited for); nothing that would outlive `remaining`.
    """
    if error.reason not in RETRYABLE or retries >= policy.max_retries:
        return None
    if error.retry_after is not None:
        if error.retry_after > policy.retry_after_cap:
            return None
        delay = error.retry_after
    else:
        delay = random.uniform(0, min(policy.backoff_cap, policy.backoff_base * 2**retries))  # noqa: S311 - jitter, not crypto
    return delay if delay < remaining else None
