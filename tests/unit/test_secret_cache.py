"""SecretCache: TTL, single flight, stale serving through outages, fail closed, invalidation.

The backend here is an in-memory double (the behaviour under test is the cache's, and a real
backend cannot be made to fail on cue from a unit test); the contract suite runs the cache
against the real local, OpenBao and moto backends.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.secrets.backend import SecretNotFound, SecretsBackendUnavailable
from app.secrets.cache import SecretCache, SecretsUnavailable
from app.secrets.scrub import forget_registered_secrets, scrub
from app.secrets.values import SecretAccessDenied, SecretRef, SecretValue
from app.tenancy.scope import TenantScope

ACME = TenantScope(tenant_id="acme", subject="alice", roles=frozenset())
GLOBEX = TenantScope(tenant_id="globex", subject="bob", roles=frozenset())
REF = SecretRef.parse("tenants/acme/openai")
PLATFORM = SecretRef.parse("platform/openai")


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self.values: dict[str, str] = {str(REF): "sk-acme-first-0123456789"}
        self.calls = 0
        self.down = False
        self.delay = 0.0

    async def get(
        self,
        ref: SecretRef,
        *,
        scope: TenantScope,
        version: int | None = None,
        platform_refs: frozenset[str] = frozenset(),
    ) -> SecretValue:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise SecretsBackendUnavailable("connection refused")
        if str(ref) not in self.values:
            raise SecretNotFound(str(ref))
        return SecretValue(self.values[str(ref)])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(backend: MemoryBackend, clock: Clock) -> SecretCache:
    return SecretCache(
        backend,  # type: ignore[arg-type]
        ttl_seconds=60,
        max_stale_seconds=300,
        clock=clock,
        platform_refs=lambda tenant: frozenset({"platform/openai"} if tenant == "globex" else ()),
    )


async def test_a_fresh_value_is_served_from_memory_until_the_ttl(
    cache: SecretCache, backend: MemoryBackend, clock: Clock
) -> None:
    first = await cache.get(REF, scope=ACME)
    backend.values[str(REF)] = "sk-acme-second-0123456789"
    clock.now += 59
    assert await cache.get(REF, scope=ACME) == first
    clock.now += 2
    assert (await cache.get(REF, scope=ACME)).reveal() == "sk-acme-second-0123456789"
    assert backend.calls == 2


async def test_100_concurrent_misses_make_one_backend_call(
    cache: SecretCache, backend: MemoryBackend
) -> None:
    backend.delay = 0.01
    values = await asyncio.gather(*(cache.get(REF, scope=ACME) for _ in range(100)))
    assert backend.calls == 1
    assert all(v.reveal() == "sk-acme-first-0123456789" for v in values)


async def test_a_cancelled_first_caller_does_not_fail_the_others(
    cache: SecretCache, backend: MemoryBackend
) -> None:
    backend.delay = 0.05
    first = asyncio.create_task(cache.get(REF, scope=ACME))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(cache.get(REF, scope=ACME))
    first.cancel()
    assert (await second).reveal() == "sk-acme-first-0123456789"
    assert backend.calls == 1


async def test_outage_serves_stale_until_max_staleness_then_fails_closed_with_503(
    cache: SecretCache, backend: MemoryBackend, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    await cache.get(REF, scope=ACME)
    backend.down = True
    clock.now += 60 + 299
    with caplog.at_level(logging.WARNING):
        assert (await cache.get(REF, scope=ACME)).reveal() == "sk-acme-first-0123456789"
    assert "serving 'tenants/acme/openai'" in caplog.text
    assert "sk-acme-first" not in caplog.text

    clock.now += 2
    with pytest.raises(SecretsUnavailable) as caught:
        await cache.get(REF, scope=ACME)
    assert caught.value.status == 503
    assert caught.value.code == "secrets_unavailable"
    assert caught.value.headers["Retry-After"] == "5"

    backend.down = False
    assert (await cache.get(REF, scope=ACME)).reveal() == "sk-acme-first-0123456789"


async def test_outage_with_nothing_cached_fails_closed(
    cache: SecretCache, backend: MemoryBackend
) -> None:
    backend.down = True
    with pytest.raises(SecretsUnavailable):
        await cache.get(REF, scope=ACME)


async def test_invalidate_forces_one_refetch(cache: SecretCache, backend: MemoryBackend) -> None:
    await cache.get(REF, scope=ACME)
    backend.values[str(REF)] = "sk-acme-rotated-0123456789"
    await cache.invalidate(REF, scope=ACME)
    assert (await cache.get(REF, scope=ACME)).reveal() == "sk-acme-rotated-0123456789"
    assert (await cache.get(REF, scope=ACME)).reveal() == "sk-acme-rotated-0123456789"
    assert backend.calls == 2


async def test_a_deleted_secret_is_not_served_from_cache_after_refetch(
    cache: SecretCache, backend: MemoryBackend, clock: Clock
) -> None:
    await cache.get(REF, scope=ACME)
    del backend.values[str(REF)]
    clock.now += 61
    with pytest.raises(SecretNotFound):
        await cache.get(REF, scope=ACME)


async def test_another_tenant_cannot_read_a_cached_value(
    cache: SecretCache, backend: MemoryBackend
) -> None:
    await cache.get(REF, scope=ACME)
    with pytest.raises(SecretAccessDenied):
        await cache.get(REF, scope=GLOBEX)
    with pytest.raises(SecretAccessDenied):
        await cache.invalidate(REF, scope=GLOBEX)
    assert backend.calls == 1


async def test_platform_refs_only_for_tenants_that_opt_in(
    cache: SecretCache, backend: MemoryBackend
) -> None:
    backend.values[str(PLATFORM)] = "sk-platform-0123456789abcd"
    assert (await cache.get(PLATFORM, scope=GLOBEX)).reveal() == "sk-platform-0123456789abcd"
    with pytest.raises(SecretAccessDenied):
        await cache.get(PLATFORM, scope=ACME)


async def test_fetched_values_are_registered_for_scrubbing(cache: SecretCache) -> None:
    forget_registered_secrets()
    value = await cache.get(REF, scope=ACME)
    assert value.reveal() not in scrub(f"echo: {value.reveal()}!")
    forget_registered_secrets()


async def test_refetch_rejected_returns_a_newer_value_once_for_many_rejections(
    cache: SecretCache, backend: MemoryBackend
) -> None:
    rejected = await cache.get(REF, scope=ACME)
    backend.values[str(REF)] = "sk-acme-rotated-0123456789"
    backend.delay = 0.01

    results = await asyncio.gather(
        *(cache.refetch_rejected(REF, rejected, scope=ACME) for _ in range(20))
    )

    assert {r.reveal() for r in results if r is not None} == {"sk-acme-rotated-0123456789"}
    assert backend.calls == 2


async def test_refetch_rejected_says_none_when_the_store_has_nothing_newer(
    cache: SecretCache, backend: MemoryBackend
) -> None:
    rejected = await cache.get(REF, scope=ACME)
    assert await cache.refetch_rejected(REF, rejected, scope=ACME) is None
    assert backend.calls == 2
