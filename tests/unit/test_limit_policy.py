"""Rate-limit buckets, decisions and headers (no store: the counts are given)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.limits.middleware import LIMITED_PATHS, TOKEN_PATHS, _under
from app.limits.policy import (
    Counts,
    Decision,
    QuotaExceeded,
    RateLimited,
    buckets_for,
    check,
)
from app.tenancy.manifest import LimitsSpec
from app.tenancy.scope import TenantScope

LIMITS = LimitsSpec(
    requests_per_minute=10,
    tokens_per_day=100,
    requests_per_minute_per_user=4,
    requests_per_minute_per_key=6,
)


def _scope(credential: str) -> TenantScope:
    return TenantScope(tenant_id="t1", subject="alice", roles=frozenset(), credential_id=credential)


def test_buckets_never_carry_the_raw_subject_or_key_secret() -> None:
    scope = _scope("svc:k123")
    buckets = buckets_for(scope, LIMITS)
    assert [(b.policy, b.limit) for b in buckets] == [("key", 6), ("tenant", 10), ("user", 4)]
    assert buckets[0].key == "key:k123"
    assert buckets[2].key == f"user:{scope.enduser_id}"
    assert all("alice" not in b.key for b in buckets)


def test_jwt_callers_have_no_key_bucket_and_unset_limits_add_none() -> None:
    assert [b.policy for b in buckets_for(_scope("jwt:kid1"), LIMITS)] == ["tenant", "user"]
    assert [b.policy for b in buckets_for(_scope("apikey:k1"), LimitsSpec())] == ["tenant"]


def test_headers_report_every_policy_and_the_tightest() -> None:
    buckets = buckets_for(_scope("apikey:k1"), LIMITS)
    hits = {"tenant": 5, f"user:{_scope('x').enduser_id}": 3, "key:k1": 2}
    decision = Decision(buckets, Counts(hits=hits, reset_seconds=12.2, tokens_today=None))
    assert decision.headers() == {
        "RateLimit-Policy": '"key";q=6;w=60, "tenant";q=10;w=60, "user";q=4;w=60',
        "RateLimit": '"user";r=1;t=13',
    }
    check(decision, LIMITS)  # under every limit: no exception


def test_over_a_bucket_is_rate_limited_with_retry_after() -> None:
    buckets = buckets_for(_scope("jwt:k"), LIMITS)
    counts = Counts(hits={"tenant": 11}, reset_seconds=0.2, tokens_today=0)
    with pytest.raises(RateLimited) as raised:
        check(Decision(buckets, counts), LIMITS)
    assert raised.value.headers["Retry-After"] == "1"
    assert raised.value.status == 429


def test_spent_budget_is_quota_exceeded_until_utc_midnight() -> None:
    buckets = buckets_for(_scope("jwt:k"), LIMITS)
    counts = Counts(hits={"tenant": 1}, reset_seconds=30, tokens_today=100)
    now = datetime(2026, 11, 30, 23, 0, 0, tzinfo=UTC)
    with pytest.raises(QuotaExceeded) as raised:
        check(Decision(buckets, counts), LIMITS, now=now)
    assert raised.value.headers["Retry-After"] == "3600"
    assert raised.value.code == "quota_exceeded"
    check(Decision(buckets, Counts({"tenant": 1}, 30, 99)), LIMITS, now=now)


@pytest.mark.parametrize(
    ("path", "limited", "tokens"),
    [
        ("/v1/chat", True, True),
        ("/v1/chat/completions", True, True),
        ("/v1/search", True, False),
        ("/v1/documents/abc", True, False),
        ("/v1/chatter", False, False),
        ("/v1/admin/usage", False, False),
    ],
)
def test_paths_counted(path: str, limited: bool, tokens: bool) -> None:
    assert _under(path, LIMITED_PATHS) is limited
    assert _under(path, TOKEN_PATHS) is tokens
