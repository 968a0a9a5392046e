"""The `anthropic` provider: the Messages API through the official async SDK."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, cast

import anthropic
import msgspec
from anthropic.types import MessageParam

from app.llm.provider import Completion, CompletionRequest, ProviderError, StreamEvent
from app.llm.remote import chat_messages, system_prompt
from app.llm.sdk_provider import RemoteProvider

if TYPE_CHECKING:
    from app.secrets.values import SecretValue
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


class AnthropicProvider(RemoteProvider):
    """One chain entry served by Anthropic (or anything speaking its API at `base_url`)."""

    name = "anthropic"
    default_host = "api.anthropic.com"

    def _client(self, key: SecretValue, scope: TenantScope) -> anthropic.AsyncAnthropic:
        return self._clients.anthropic(
            tenant_id=scope.tenant_id, base_url=self._keys.entry.base_url, key=key
        )

    async def _complete(
        self,
        key: SecretValue,
        request: CompletionRequest,
        *,
        scope: TenantScope,
        time_budget: float,
    ) -> Completion:
        # The raw answer, decoded by msgspec into the fields used: their types are checked
        # (the SDK's own model is built without validation, so a body of the wrong shape
        # used to surface as an AttributeError, a 500), and it costs less.
        raw = await self._client(key, scope).messages.with_raw_response.create(
            model=request.model,
            system=system_prompt(request),
            messages=cast("list[MessageParam]", chat_messages(request)),
            max_tokens=self._max_output_tokens,
            timeout=self._timeout(time_budget),
        )
        message = _decode_message(await raw.read())
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

    async def _stream(
        self,
        key: SecretValue,
        request: CompletionRequest,
        *,
        scope: TenantScope,
        time_budget: float,
    ) -> AsyncGenerator[StreamEvent, None]:
        parts: list[str] = []
        response_id = model = finish = ""
        input_tokens = output_tokens = 0
        stopped = False
        stream = await self._client(key, scope).messages.create(
            model=request.model,
            system=system_prompt(request),
            messages=cast("list[MessageParam]", chat_messages(request)),
            max_tokens=self._max_output_tokens,
            stream=True,
            timeout=self._timeout(time_budget),
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
