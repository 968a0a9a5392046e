"""What a request is counted against, what a count means, and how it is told to the client.

Buckets: the tenant always; the user (pseudonymous `enduser_id`) and the API key when the
manifest sets a per-user / per-key limit. Windows are fixed minutes on the store's clock, so
every replica counts in the same window (with local admission, as each replica reckons the
store's clock from its last sync). Headers follow draft-ietf-httpapi-ratelimit-headers
(-08 and later): `RateLimit-Policy: "tenant";q=600;w=60` lists every policy that applies,
`RateLimit: "user";r=3;t=42` reports the one closest to refusing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.problems import ApiError
from app.tenancy.manifest import LimitsSpec
from app.tenancy.scope import TenantScope

WINDOW_SECONDS = 60


class RateLimited(ApiError):
    """Too many requests in the current window for the tenant, the user or the key."""

    status, code, title = 429, "rate_limited", "Rate limited"


class QuotaExceeded(ApiError):
    """The tenant's LLM token budget for the UTC day is spent."""

    status, code, title = 429, "quota_exceeded", "Quota exceeded"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter a request is charged to.

    Attributes:
        policy: Name in the RateLimit headers: `tenant`, `user` or `key`.
        key: Counter key within the tenant (never a raw subject or credential).
        limit: Requests allowed per window.
    """

    policy: str
    key: str
    limit: int


def buckets_for(scope: TenantScope, limits: LimitsSpec) -> list[Bucket]:
    """The buckets a request by `scope` is counted against, sorted by key (lock order)."""
    buckets = [Bucket("tenant", "tenant", limits.requests_per_minute)]
    if limits.requests_per_minute_per_user is not None:
        buckets.append(
            Bucket("user", f"user:{scope.enduser_id}", limits.requests_per_minute_per_user)
        )
    kind, _, key_id = scope.credential_id.partition(":")
    if limits.requests_per_minute_per_key is not None and kind in ("apikey", "svc") and key_id:
        # A service token counts against the API key it was exchanged for.
        buckets.append(Bucket("key", f"key:{key_id}", limits.requests_per_minute_per_key))
    return sorted(buckets, key=lambda b: b.key)


@dataclass(frozen=True, slots=True)
class Counts:
    """What the store answered for one request.

    Attributes:
        hits: Requests counted in the current window per bucket key, this one included.
        reset_seconds: Seconds until the current window ends.
        tokens_today: Tokens charged to the tenant so far this UTC day (None: not read).
        shared: Whether the counts include the other replicas' (False: local admission while
            the store is unreachable, this replica's own counts only).
    """

    hits: dict[str, int]
    reset_seconds: float
    tokens_today: int | None
    shared: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request: counts per bucket, and the headers that report them."""

    buckets: list[Bucket]
    counts: Counts

    def remaining(self, bucket: Bucket) -> int:
        """Requests left in the window for `bucket`."""
        return max(0, bucket.limit - self.counts.hits.get(bucket.key, 0))

    def exceeded(self) -> list[Bucket]:
        """Buckets this request went over."""
        return [b for b in self.buckets if self.counts.hits.get(b.key, 0) > b.limit]

    def headers(self) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` for the response."""
        reset = max(1, math.ceil(self.counts.reset_seconds))
        tightest = min(self.buckets, key=self.remaining)
        return {
            "RateLimit-Policy": ", ".join(
                f'"{b.policy}";q={b.limit};w={WINDOW_SECONDS}' for b in self.buckets
            ),
            "RateLimit": f'"{tightest.policy}";r={self.remaining(tightest)};t={reset}',
        }


def check(decision: Decision, limits: LimitsSpec, *, now: datetime | None = None) -> None:
    """Refuse the request if it went over a bucket, or the day's token budget is spent.

    Raises:
        RateLimited: A bucket is over its limit; `Retry-After` is the window's end.
        QuotaExceeded: `tokens_per_day` is spent; `Retry-After` is the next UTC midnight.
    """
    headers = decision.headers()
    over = decision.exceeded()
    if over:
        policies = ", ".join(b.policy for b in over)
        retry = max(1, math.ceil(decision.counts.reset_seconds))
        raise RateLimited(
            f"request limit reached ({policies}); retry in {retry} s",
            headers=headers | {"Retry-After": str(retry)},
        )
    used = decision.counts.tokens_today
    if used is not None and used >= limits.tokens_per_day:
        current = now or datetime.now(UTC)
        midnight = datetime.combine(current.date() + timedelta(days=1), datetime.min.time(), UTC)
        retry = max(1, math.ceil((midnight - current).total_seconds()))
        raise QuotaExceeded(
            f"the tenant's token budget for today ({limits.tokens_per_day}) is spent",
            headers=headers | {"Retry-After": str(retry)},
        )
