"""SdkClients: the remote providers' SDK clients, shared connection pools, per-key clients.

Constructing an `AsyncOpenAI` or `AsyncAnthropic` without an `http_client` builds a fresh
httpx2 client, and with it an SSL context: ~15 ms of CPU each on the build machine, against
~0.05 ms when the SDK client is handed an existing pool (`python -m benchmarks.llm` reports
both). So the process keeps one pooled HTTP client per (SDK, base URL) for its whole life, and
SDK clients, which are cheap and carry the key, are cached per (tenant, base URL, key) in a
bounded LRU.

The pools use each SDK's `DefaultAioHttpClient` (the SDKs' own `aiohttp` extra: the SDK's
request building, auth and errors, with aiohttp moving the bytes): a Chat Completions call
costs ~0.8 ms of CPU that way against ~1.2 ms on the default httpx2/httpcore2 transport
(`python -m benchmarks.sdk_call`), the largest single item of a `/v1/chat` request.

Sharing a pool between tenants is safe: connections carry no credentials (the key travels in
each request's headers, which the SDK client sets), and the pool is per base URL, so a
tenant's slow self-hosted endpoint cannot use up the connections to api.openai.com.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

import anthropic
import httpx2
import openai

from app.secrets.values import SecretValue

ClientT = TypeVar("ClientT")


class _Lru(Generic[ClientT]):
    """At most `size` clients, the least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str, str], ClientT] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> ClientT | None:
        client = self._items.get(key)
        if client is not None:
            self._items.move_to_end(key)
        return client

    def put(self, key: tuple[str, str, str], client: ClientT) -> None:
        self._items[key] = client
        # An evicted client needs no closing: its connections belong to the shared pool.
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _cache_key(tenant_id: str, base_url: str | None, key: SecretValue) -> tuple[str, str, str]:
    # A digest, so the cache's keys are not one more copy of the secret; a rotated key gets
    # a new entry, and the old key's client ages out of the LRU.
    digest = hashlib.sha256(key.reveal().encode()).hexdigest()
    return tenant_id, base_url or "", digest


class SdkClients:
    """The openai/anthropic SDK clients of every tenant, over shared connection pools.

    One instance per process (owned by the chat service); `aclose` closes the pools.
    """

    def __init__(self, *, max_clients: int = 1024) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._pools: dict[tuple[str, str], httpx2.AsyncClient] = {}
        self._openai: _Lru[openai.AsyncOpenAI] = _Lru(max_clients)
        self._anthropic: _Lru[anthropic.AsyncAnthropic] = _Lru(max_clients)

    def _pool(self, sdk: str, base_url: str | None) -> httpx2.AsyncClient:
        pool = self._pools.get((sdk, base_url or ""))
        if pool is None:
            # Each SDK's default client class carries its own limits, timeout and redirect
            # defaults; a bare httpx2.AsyncClient would silently drop them.
            factory = (
                openai.DefaultAioHttpClient if sdk == "openai" else anthropic.DefaultAioHttpClient
            )
            pool = self._pools[(sdk, base_url or "")] = factory()
        return pool

    def openai(
        self, *, tenant_id: str, base_url: str | None, key: SecretValue
    ) -> openai.AsyncOpenAI:
        """The OpenAI SDK client for this tenant, base URL and key (built on first use)."""
        cache_key = _cache_key(tenant_id, base_url, key)
        client = self._openai.get(cache_key)
        if client is None:
            # The router owns retries and timeouts: the SDK must not retry behind its back.
            client = openai.AsyncOpenAI(
                api_key=key.reveal(),
                base_url=base_url,
                max_retries=0,
                organization=None,
                project=None,
                http_client=self._pool("openai", base_url),
            )
            self._openai.put(cache_key, client)
        return client

    def anthropic(
        self, *, tenant_id: str, base_url: str | None, key: SecretValue
    ) -> anthropic.AsyncAnthropic:
        """The Anthropic SDK client for this tenant, base URL and key (built on first use)."""
        cache_key = _cache_key(tenant_id, base_url, key)
        client = self._anthropic.get(cache_key)
        if client is None:
            client = anthropic.AsyncAnthropic(
                api_key=key.reveal(),
                base_url=base_url,
                max_retries=0,
                # Bulkhead writes the attempt spans itself, attributed to the tenant; the
                # SDK's own would be unattributed duplicates.
                open_telemetry=False,
                http_client=self._pool("anthropic", base_url),
            )
            self._anthropic.put(cache_key, client)
        return client

    def cached(self) -> int:
        """How many SDK clients are cached (both SDKs)."""
        return len(self._openai) + len(self._anthropic)

    def pools(self) -> int:
        """How many connection pools are open."""
        return len(self._pools)

    async def aclose(self) -> None:
        """Close every connection pool (the SDK clients become unusable)."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()
