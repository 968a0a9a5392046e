"""The base of the providers reached through an official SDK (OpenAI, Anthropic).

Apart from `app/llm/remote.py` (the prompt, the endpoint, the key), which the chat path imports
without wanting the SDKs: importing this module loads both SDKs' exception types.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import httpx2

from app.llm.errors import classify
from app.llm.keys import SecretResolver
from app.llm.provider import Completion, CompletionRequest, ProviderError, StreamEvent
from app.llm.remote import EntryKey, endpoint_of

if TYPE_CHECKING:
    from app.llm.clients import SdkClients
    from app.secrets.values import SecretValue
    from app.tenancy.manifest import ChainEntry
    from app.tenancy.scope import TenantScope


class RemoteProvider:
    """A provider reached through its official SDK: one chain entry's key, pools, timeouts.

    Subclasses say how to call their API (`_complete`, `_stream`); every SDK error becomes a
    `ProviderError` here, its message scrubbed of the key.
    """

    name: str
    default_host: ClassVar[str]

    def __init__(
        self,
        entry: ChainEntry,
        resolver: SecretResolver,
        *,
        clients: SdkClients,
        connect_timeout: float,
        max_output_tokens: int,
    ) -> None:
        self._keys = EntryKey(entry, resolver)
        self._clients = clients
        self._connect_timeout = connect_timeout
        self._max_output_tokens = max_output_tokens
        self.endpoint = endpoint_of(entry.base_url, self.default_host)

    def _timeout(self, time_budget: float) -> httpx2.Timeout:
        """The attempt's budget, with the connect timeout inside it."""
        return httpx2.Timeout(time_budget, connect=self._connect_timeout)

    async def complete(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> Completion:
        """One call of the provider's API.

        Raises:
            ProviderError: The call failed; the message never carries the key.
        """
        key = await self._keys.key(scope=scope)
        with _classified(key):
            return await self._complete(key, request, scope=scope, time_budget=time_budget)

    async def stream(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """A streamed call: text deltas, then the completion with usage.

        Raises:
            ProviderError: The call failed, or the stream broke or ended before the answer.
        """
        key = await self._keys.key(scope=scope)
        with _classified(key):
            async for event in self._stream(key, request, scope=scope, time_budget=time_budget):
                yield event

    async def _complete(
        self,
        key: SecretValue,
        request: CompletionRequest,
        *,
        scope: TenantScope,
        time_budget: float,
    ) -> Completion:
        raise NotImplementedError

    def _stream(
        self,
        key: SecretValue,
        request: CompletionRequest,
        *,
        scope: TenantScope,
        time_budget: float,
    ) -> AsyncGenerator[StreamEvent, None]:
        raise NotImplementedError

    async def invalidate_key(self, *, scope: TenantScope) -> None:
        """Forget the tenant's key for this entry."""
        await self._keys.invalidate(scope=scope)

    async def aclose(self) -> None:
        """Nothing to release: the connection pools belong to `SdkClients`."""


@contextmanager
def _classified(key: SecretValue) -> Iterator[None]:
    """Turn whatever the SDK raised into a `ProviderError` whose message never holds `key`."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise classify(exc, key=key.reveal()) from None
