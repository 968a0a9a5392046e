"""The `anthropic` provider: the Messages API through the official async SDK."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import anthropic
import httpx2
import msgspec
from anthropic.types import MessageParam

from app.llm.clients import SdkClients
from app.llm.errors import classify
from app.llm.keys import SecretResolver
from app.llm.provider import Completion, CompletionRequest, ProviderError, StreamEvent
from app.llm.remote import EntryKey, conversation, endpoint_of, system_prompt

if TYPE_CHECKING:
    from app.secrets.values import SecretValue
    from app.tenancy.manifest import ChainEntry
    from app.tenancy.scope import TenantScope


class _Block(msgspec.Struct):
    type: str
    text: str = ""


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None


class _Message(msgspec.Struct):
    """The fields of a Messages answer Bulkhead reads; the rest is ignored."""

    content: list[_Block]
    id: str = ""
    model: str = ""
    stop_reason: str | None = None
    usage: _Usage | None = None


_decode_message = msgspec.json.Decoder(_Message).decode


class AnthropicProvider:
    """One chain entry served by Anthropic (or anything speaking its API at `base_url`)."""

    name = "anthropic"

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
        self.endpoint = endpoint_of(entry.base_url, "api.anthropic.com")

    def _client(self, key: SecretValue, scope: TenantScope) -> anthropic.AsyncAnthropic:
        return self._clients.anthropic(
            tenant_id=scope.tenant_id, base_url=self._keys.entry.base_url, key=key
        )

    def _messages(self, request: CompletionRequest) -> list[MessageParam]:
        messages: list[MessageParam] = []
        for role, content in conversation(request):
            if role == "assistant":
                messages.append({"role": "assistant", "content": content})
            else:
                messages.append({"role": "user", "content": content})
        return messages

    async def complete(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> Completion:
        """One Messages call.

        Raises:
            ProviderError: The call failed; the message never carries the key.
        """
        key = await self._keys.key(scope=scope)
        try:
            # The raw answer, decoded by msgspec into the fields used: their types are checked
            # (the SDK's own model is built without validation, so a body of the wrong shape
            # used to surface as an AttributeError, a 500), and it costs less.
            raw = await self._client(key, scope).messages.with_raw_response.create(
                model=request.model,
                system=system_prompt(request),
                messages=self._messages(request),
                max_tokens=self._max_output_tokens,
                timeout=httpx2.Timeout(time_budget, connect=self._connect_timeout),
            )
            message = _decode_message(await raw.read())
        except Exception as exc:
            raise classify(exc, key=key.reveal()) from None
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage
        return Completion(
            text=text,
            provider=self.name,
            model=message.model or request.model,
            input_tokens=(usage.input_tokens or 0) if usage else 0,
            output_tokens=(usage.output_tokens or 0) if usage else 0,
            finish_reason=message.stop_reason or "end_turn",
            response_id=message.id,
        )

    async def stream(
        self, request: CompletionRequest, *, scope: TenantScope, time_budget: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """A streamed Messages call: text deltas, then the completion with usage.

        Raises:
            ProviderError: The call failed, or the stream broke or ended without `message_stop`.
        """
        key = await self._keys.key(scope=scope)
        parts: list[str] = []
        response_id = model = finish = ""
        input_tokens = output_tokens = 0
        stopped = False
        try:
            stream = await self._client(key, scope).messages.create(
                model=request.model,
                system=system_prompt(request),
                messages=self._messages(request),
                max_tokens=self._max_output_tokens,
                stream=True,
                timeout=httpx2.Timeout(time_budget, connect=self._connect_timeout),
            )
            try:
                async for event in stream:
                    if event.type == "message_start":
                        response_id, model = event.message.id, event.message.model
                        input_tokens = event.message.usage.input_tokens
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        parts.append(event.delta.text)
                        yield event.delta.text
                    elif event.type == "message_delta":
                        finish = event.delta.stop_reason or finish
                        output_tokens = event.usage.output_tokens
                    elif event.type == "message_stop":
                        stopped = True
            finally:
                await stream.close()
        except Exception as exc:
            raise classify(exc, key=key.reveal()) from None
        if not stopped:
            raise ProviderError("the stream ended before the answer", reason="stream_interrupted")
        yield Completion(
            text="".join(parts),
            provider=self.name,
            model=model or request.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            finish_reason=finish or "end_turn",
            response_id=response_id,
        )

    async def invalidate_key(self, *, scope: TenantScope) -> None:
        """Forget the tenant's key for this entry."""
        await self._keys.invalidate(scope=scope)

    async def aclose(self) -> None:
        """Nothing to release: the connection pools belong to `SdkClients`."""
