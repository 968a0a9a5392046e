"""Rate limiting in the request pipeline: count, refuse with 429, report in headers.

Each authenticated chat, search and document request is counted; over a limit it is
refused with 429 `rate_limited` / `quota_exceeded`, otherwise its response carries the
`RateLimit-Policy` and `RateLimit` headers.

It sits right after authentication (the tenant, user and key are known) and before any
handler work. With local admission (the default, `app/limits/local.py`) it costs no round
trip: the replica decides on its own view, synced in batches. With `limits.admission: exact`
it costs one round trip to the counter store per request.

If the store is unreachable, local admission keeps enforcing the replica's own view and
exact admission lets the request through: a limiter outage must not become a service
outage. Either way the span says `bulkhead.ratelimit.outcome=store_error` for a request
admitted without the shared count, and the outage is logged once (`StoreHealth`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace

from app.db.registry import TenantRegistry
from app.limits.local import LocalCounters
from app.limits.policy import Decision, QuotaExceeded, RateLimited, buckets_for, check
from app.limits.store import STORE_DOWN, CounterStore, StoreHealth
from app.tenancy.scope import TenantScope

LIMITED_PATHS = ("/v1/chat", "/v1/search", "/v1/documents")
"""Path prefixes counted (and everything under them): chat incl. /v1/chat/completions."""
TOKEN_PATHS = ("/v1/chat",)
"""Path prefixes refused once the day's token budget is spent."""


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


class RequestLimiter:
    """Applies a tenant's `limits` to one request: on the local view, or at the store (exact)."""

    def __init__(
        self,
        store: CounterStore,
        registry: TenantRegistry,
        *,
        sync_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._registry = registry
        self.health = StoreHealth(clock)
        self.local = LocalCounters(store, self.health, interval=sync_interval, clock=clock)

    def start(self) -> None:
        """Start the background syncs of local admission."""
        self.local.start()

    async def sync_now(self) -> bool:
        """Sync local admission's counts at once (tests and shutdown); False: store down."""
        return await self.local.sync_now()

    async def aclose(self) -> None:
        """Stop syncing, push the last counts, and close the store's connections."""
        await self.local.aclose()
        await self.store.aclose()

    async def admit(self, scope: TenantScope, *, spends_tokens: bool) -> Decision | None:
        """Count the request and decide; None when the tenant is unknown (auth refuses it).

        Raises:
            RateLimited: Over the tenant's, the user's or the key's requests per minute.
            QuotaExceeded: The tenant's tokens for the UTC day are spent (token paths only).
            OSError: Exact admission only: the store is unreachable (one of `STORE_DOWN`).
        """
        record = self._registry.tenant(scope.tenant_id)
        if record is None:
            return None
        limits = record.manifest.limits
        buckets = buckets_for(scope, limits)
        keys = [b.key for b in buckets]
        if limits.admission == "exact":
            try:
                counts = await self.store.hit(scope, keys, with_tokens=spends_tokens)
            except STORE_DOWN as exc:
                self.health.failed(exc)
                raise
            self.health.recovered()
        else:
            counts = self.local.count(scope, keys, with_tokens=spends_tokens)
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
        except STORE_DOWN:
            # Exact admission: logged once per outage by the limiter's StoreHealth.
            span.set_attribute("bulkhead.ratelimit.outcome", "store_error")
            decision = None
        if decision is None:
            await self.app(scope, receive, send)
            return
        span.set_attribute(
            "bulkhead.ratelimit.outcome", "admitted" if decision.counts.shared else "store_error"
        )
        headers = decision.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableScopeHeaders.from_message(message)
                for name, value in headers.items():
                    response_headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
