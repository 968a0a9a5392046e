"""Local admission: each replica decides on its own view and shares its counts in batches.

The default (manifest `limits.admission: local`). A request costs no round trip: it is counted
in this process against each of its buckets, in the current fixed window, and decided on

    view = shared total last read + counted here since that read

(`check` refuses it when the view is over a bucket's limit; refused requests count too, as in
exact mode). A background task syncs every `sync_interval`: it pushes every count taken since
the last sync, each tagged with the window it was counted in, and reads back the shared totals
of those buckets and the token totals of the tenants that asked, in one round trip per store
(`CounterStore.sync`). Windows follow the store's clock: each answer carries it, and a replica
keeps the offset to its own monotonic clock (about half a round trip off, at most).

Over-admission bound, per bucket and window, with R replicas: a replica's view misses only
what the others counted and have not yet pushed, or pushed after its last read. Take the
replica m whose last read before its last admission came latest: that read includes what every
replica had pushed by its own last read, and m admits at most `limit - total read` after it.
So what goes over the limit is what the other R - 1 replicas admitted after their last reads,
and a replica reads a bucket back at the first sync after it counted it:

    admitted <= limit + (R - 1) x (what one replica admits in one sync interval plus one
                                   sync round trip)
             <= limit + (R - 1) x rate x (sync_interval + round trip)

with `rate` one replica's request rate on that bucket; never more than R x limit, since no
replica admits more than the limit on its own count. No under-admission: a view never exceeds
the true count, so nothing is refused before the limit was reached (except when a sync's answer
was lost after the store had applied it: its counts go again, and are counted twice).

If the store cannot be reached, each replica keeps enforcing its own view (its last read plus
everything it counted since), keeps its counts for the next sync, and its requests are marked
`store_error`; the outage is logged once (`StoreHealth`). Memory: a window's counts are dropped
at the first sync after the window ends (once pushed); a tenant's record goes with its last
count, or at the end of the UTC day when it holds that day's token total.

The token total is today's, read at the first sync after each token path request (it is a
lower bound all day long: tokens are only ever added, and charged when a call ends). A replica
decides on the total it last read (none yet: admit), so once a budget is spent, a replica admits
chat requests for at most one sync interval plus a round trip after its next chat request: the
same bound as the counts, in chats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.limits.policy import WINDOW_SECONDS, Counts
from app.limits.store import STORE_DOWN, CounterStore, Push, StoreHealth
from app.tenancy.scope import TenantScope

_log = logging.getLogger(__name__)

SYNC_ACTOR = "bulkhead:rate-limit-sync"
"""The system actor the syncs push a tenant's counts as."""
DAY_SECONDS = 86_400


@dataclass(slots=True)
class _Count:
    """One bucket in one window, as this replica sees it."""

    synced: int = 0
    """The shared total last read (this replica's pushes up to that read included)."""
    in_flight: int = 0
    """Counted here and pushed by the sync under way."""
    pending: int = 0
    """Counted here since the last push."""


class _TenantView:
    """This replica's counts and token total for one tenant."""

    __slots__ = ("counts", "scope", "tokens", "tokens_day", "wants_tokens")

    def __init__(self, tenant_id: str) -> None:
        self.scope = TenantScope.system(tenant_id, actor=SYNC_ACTOR)
        self.counts: dict[tuple[str, int], _Count] = {}
        self.tokens = 0
        self.tokens_day = -1
        """UTC day (days since the epoch) `tokens` was read on; -1: never read."""
        self.wants_tokens = False


class LocalCounters:
    """This replica's view of every bucket it counted in the current window, synced in batches."""

    def __init__(
        self,
        store: CounterStore,
        health: StoreHealth,
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._health = health
        self._interval = interval
        self._clock = clock
        # Store time is `clock() + offset`; the wall clock stands in until the first answer.
        self._offset = time.time() - clock()
        self._window = 0
        self._tenants: dict[str, _TenantView] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _now(self) -> tuple[int, float]:
        """The current window and the store's time, as this replica reckons them."""
        now = self._clock() + self._offset
        window = int(now // WINDOW_SECONDS)
        # Never back into a window already left: a new offset may move the clock back a little.
        if window > self._window:
            self._window = window
        return self._window, now

    def count(self, scope: TenantScope, keys: list[str], *, with_tokens: bool) -> Counts:
        """Count one request against each of `keys` and return the view (no I/O)."""
        window, now = self._now()
        view = self._tenants.get(scope.tenant_id)
        if view is None:
            view = self._tenants[scope.tenant_id] = _TenantView(scope.tenant_id)
        hits = {}
        for key in keys:
            count = view.counts.get((key, window))
            if count is None:
                count = view.counts[(key, window)] = _Count()
            count.pending += 1
            hits[key] = count.synced + count.in_flight + count.pending
        tokens = None
        if with_tokens:
            view.wants_tokens = True
            if view.tokens_day == int(now // DAY_SECONDS):
                tokens = view.tokens
        reset = min(float(WINDOW_SECONDS), (window + 1) * WINDOW_SECONDS - now)
        return Counts(
            hits=hits, reset_seconds=reset, tokens_today=tokens, shared=not self._health.down
        )

    def size(self) -> tuple[int, int]:
        """(tenants, bucket-window counts) held: what the memory bound is about."""
        return len(self._tenants), sum(len(v.counts) for v in self._tenants.values())

    def start(self) -> None:
        """Start syncing every interval in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rate-limit-sync")

    async def aclose(self) -> None:
        """Stop the background syncs and push what is left (once; an outage is only logged)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self.sync_now()

    async def _run(self) -> None:
        due = self._clock()
        while True:
            # Fixed rate; a sync that overran its interval is followed at once, not twice.
            due = max(due + self._interval, self._clock())
            await asyncio.sleep(due - self._clock())
            with contextlib.suppress(Exception):  # StoreHealth has logged it
                await self.sync_now()

    async def sync_now(self) -> bool:
        """Push every count taken since the last sync and read back the shared totals.

        Waits for a sync under way, then runs one of its own. Returns False when the store
        could not be reached (the counts are kept for the next sync).

        Raises:
            Exception: Anything else the store raised (a bug: logged once, counts kept).
        """
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> bool:
        window, now = self._now()
        today = int(now // DAY_SECONDS)
        pushes: list[Push] = []
        sent: list[_Count] = []
        asked: list[_TenantView] = []
        for tenant_id, view in list(self._tenants.items()):
            for (key, counted_in), count in list(view.counts.items()):
                if counted_in < window - 1 or (counted_in < window and not count.pending):
                    # Over, and pushed (or, after a long outage, long over): nobody reads it.
                    del view.counts[(key, counted_in)]
                elif count.pending:
                    pushes.append(Push(view.scope, key, counted_in, count.pending))
                    count.in_flight, count.pending = count.pending, 0
                    sent.append(count)
            if view.wants_tokens:
                view.wants_tokens = False
                asked.append(view)
            elif not view.counts and view.tokens_day != today:
                del self._tenants[tenant_id]
        if not pushes and not asked:
            return True
        started = self._clock()
        try:
            answer = await self._store.sync(pushes, [view.scope for view in asked])
        except BaseException as exc:
            for count in sent:
                count.pending += count.in_flight
                count.in_flight = 0
            for view in asked:
                view.wants_tokens = True
            if isinstance(exc, Exception):
                self._health.failed(exc)
                if isinstance(exc, STORE_DOWN):
                    return False
            raise
        if answer.store_time is not None:
            self._offset = answer.store_time - (started + self._clock()) / 2
        for push, count in zip(pushes, sent, strict=True):
            total = answer.totals.get((push.scope.tenant_id, push.bucket, push.window))
            # Missing: the store has moved past that window; keep the view monotonic.
            count.synced = total if total is not None else count.synced + count.in_flight
            count.in_flight = 0
        for view in asked:
            read = answer.tokens.get(view.scope.tenant_id)
            if read is not None:
                view.tokens_day, view.tokens = read
            elif answer.token_error is not None:
                view.wants_tokens = True
        if answer.token_error is not None:
            self._health.failed(answer.token_error)
        else:
            self._health.recovered()
        return True
