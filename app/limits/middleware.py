"""Rate limiting in the request pipeline: count, refuse with 429, report in headers.

Each authenticated chat, search and document request is counted; over a limit it is
refused with 429 `rate_limited` / `quota_exceeded`, otherwise its response carries the
`RateLimit-Policy` and `RateLimit` headers.

It sits right after authentication (the tenant, user and key are known) and before any
handler work, and costs one round trip to the counter store. If the store is unreachable
the request goes through (logged, and `bulkhead.ratelimit.outcome=store_error` on the
span): a limiter outage must not become a service outage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import asyncpg
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.db.registry import TenantRegistry
from app.limits.policy import Decision, QuotaExceeded, RateLimited, buckets_for, check
from app.limits.store import CounterStore
from app.tenancy.scope import TenantScope

_log = logging.getLogger(__name__)

LIMITED_PATHS = ("/v1/chat", "/v1/search", "/v1/documents")
"""Path prefixes counted (and everything under them): chat incl. /v1/chat/completions."""
TOKEN_PATHS = ("/v1/chat",)
"""Path prefixes refused once the day's token budget is spent."""

# Unreachable, not broken: a SQL or script error is a bug and must surface as a 500.
_STORE_DOWN = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    RedisConnectionError,
    RedisTimeoutError,
)


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


class RequestLimiter:
    """Applies a tenant's `limits` to one request through a shared counter store."""

    def __init__(self, store: CounterStore, registry: TenantRegistry) -> None:
        self.store = store
        self._registry = registry

    async def admit(self, scope: TenantScope, *, spends_tokens: bool) -> Decision | None:
        """Count the request and decide; None when the tenant is unknown (auth refuses it).

        Raises:
            RateLimited: Over the tenant's, the user's or the key's requests per minute.
            QuotaExceeded: The tenant's tokens for the UTC day are spent (token paths only).
        """
        record = self._registry.tenant(scope.tenant_id)
        if record is None:
            return None
        limits = record.manifest.limits
        buckets = buckets_for(scope, limits)
        counts = await self.store.hit(scope, [b.key for b in buckets], with_tokens=spends_tokens)
        decision = Decision(buckets, counts)
        check(decision, limits)
        return decision


class RateLimitMiddleware:
    """Refuses over-limit requests with 429 and adds RateLimit headers to the others."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request, then pass it on with the headers attached to its response."""
        caller = scope.get("user")
        if (
            scope["type"] != ScopeType.HTTP
            or not isinstance(caller, TenantScope)
            or not _under(scope["path"], LIMITED_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        limiter: RequestLimiter = scope["litestar_app"].state.resources.limiter
        span = trace.get_current_span()
        try:
            decision = await limiter.admit(caller, spends_tokens=_under(scope["path"], TOKEN_PATHS))
        except (RateLimited, QuotaExceeded) as exc:
            span.set_attribute("bulkhead.ratelimit.outcome", exc.code)
            raise
        except _STORE_DOWN as exc:
            _log.warning("rate-limit store unavailable, request admitted: %s", exc)
            span.set_attribute("bulkhead.ratelimit.outcome", "store_error")
            decision = None
        if decision is None:
            await self.app(scope, receive, send)
            return
        span.set_attribute("bulkhead.ratelimit.outcome", "admitted")
        headers = decision.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableScopeHeaders.from_message(message)
                for name, value in headers.items():
                    response_headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
