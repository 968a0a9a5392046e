"""The `openai` provider: Chat Completions through the official async SDK."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, cast

import msgspec
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from app.llm.provider import Completion, CompletionRequest, ProviderError, StreamEvent
from app.llm.remote import chat_messages, system_prompt
from app.llm.sdk_provider import RemoteProvider

if TYPE_CHECKING:
    from app.secrets.values import SecretValue
    from app.tenancy.scope import TenantScope


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    # Some OpenAI-compatible servers send null counts.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ChatCompletion(msgspec.Struct):
    """The fields of a Chat Completions answer Bulkhead reads; the rest is ignored."""

    choices: list[_Choice]
    id: str = ""
    model: str = ""
    usage: _Usage | None = None


_decode_completion = msgspec.json.Decoder(_ChatCompletion).decode


class OpenAIProvider(RemoteProvider):
    """One chain entry served by OpenAI (or anything speaking its API at `base_url`)."""

    name = "openai"
    default_host = "api.openai.com"

    def _client(self, key: SecretValue, scope: TenantScope) -> openai.AsyncOpenAI:
        return self._clients.openai(
            tenant_id=scope.tenant_id, base_url=self._keys.entry.base_url, key=key
        )

    def body(self, request: CompletionRequest) -> dict[str, object]:
        """The Chat Completions request body, as plain JSON values."""
        return {
            "model": request.model,
            "messages": self._messages(request),
            "max_completion_tokens": self._max_output_tokens,
        }

    def streaming_body(self, request: CompletionRequest) -> dict[str, object]:
        """The streamed Chat Completions request body (usage reported in the last chunk)."""
        return self.body(request) | {"stream": True, "stream_options": {"include_usage": True}}

    def _messages(self, request: CompletionRequest) -> list[ChatCompletionMessageParam]:
        system: ChatCompletionMessageParam = {"role": "system", "content": system_prompt(request)}
        return [system, *cast("list[ChatCompletionMessageParam]", chat_messages(request))]

    async def _complete(
        self,
        key: SecretValue,
        request: CompletionRequest,
        *,
        scope: TenantScope,
        time_budget: float,
    ) -> Completion:
        # What `chat.completions.create` sends, without its per-call TypedDict transform
        # of the params (aliases and formats, none of which apply to these plain strings
        # and ints: tests/unit/test_openai_body.py): that transform was ~10% of a chat
        # request's CPU. Same endpoint, auth, errors and status handling; the answer is
        # read as bytes and decoded by msgspec into the five fields used, which checks
        # their types and costs a fraction of building the SDK's pydantic `ChatCompletion`;
        # the body goes as msgspec-encoded bytes, which the SDK sends as they are instead
        # of deep-copying the messages and encoding them with the json module.
        raw = await self._client(key, scope).post(
            "/chat/completions",
            content=msgspec.json.encode(self.body(request)),
            cast_to=bytes,
            options={"timeout": self._timeout(time_budget), "security": {"bearer_auth": True}},
        )
        response = _decode_completion(raw)
        if not response.choices:
            raise ProviderError("the provider returned no choices", reason="malformed_response")
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=choice.message.content or "",
            provider=self.name,
            model=response.model or request.model,
            input_tokens=(usage.prompt_tokens or 0) if usage else 0,
            output_tokens=(usage.completion_tokens or 0) if usage else 0,
            finish_reason=choice.finish_reason or "stop",
            response_id=response.id,
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
        # As `_complete`: what `chat.completions.create(stream=True)` sends, without the
        # per-call param transform; the SDK still reads the stream and its errors.
        stream = await self._client(key, scope).post(
            "/chat/completions",
            content=msgspec.json.encode(self.streaming_body(request)),
            cast_to=ChatCompletion,
            options={"timeout": self._timeout(time_budget), "security": {"bearer_auth": True}},
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
        try:
            async for chunk in stream:
                response_id, model = chunk.id or response_id, chunk.model or model
                if chunk.usage is not None:
                    input_tokens = chunk.usage.prompt_tokens
                    output_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish = choice.finish_reason
        finally:
            await stream.close()
        if not finish:
            # A stream that ends without a finish reason was cut, not completed.
            raise ProviderError("the stream ended before the answer", reason="stream_interrupted")
        yield Completion(
            text="".join(parts),
            provider=self.name,
            model=model or request.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            finish_reason=finish,
            response_id=response_id,
        )
