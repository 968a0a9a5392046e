"""Bodies of the OpenAI-compatible `POST /v1/chat/completions` (the subset Bulkhead serves)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from app.chat.schemas import Citation


class TextPart(msgspec.Struct, forbid_unknown_fields=True):
    """A text content part (`{"type": "text", "text": ...}`)."""

    type: Literal["text"]
    text: str


class Message(msgspec.Struct, forbid_unknown_fields=True):
    """One chat message; `developer` is OpenAI's newer name for `system`."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    """`stream_options`: only `include_usage` is meaningful here."""

    include_usage: bool = False


class CompletionsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The request; `top_k` and `filter` are Bulkhead's retrieval extensions (`extra_body`)."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1, max_length=200)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    top_k: int | None = None
    filter: dict[str, Any] | None = None
    tenant_id: str | None = None


# OpenAI parameters Bulkhead refuses by name (rather than as unknown fields), so a client
# learns that the parameter exists but is not honoured here instead of assuming it was.
UNSUPPORTED_PARAMETERS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "reasoning_effort",
        "response_format",
        "seed",
        "service_tier",
        "stop",
        "store",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "web_search_options",
    }
)


class AssistantMessage(msgspec.Struct):
    """`choices[0].message`."""

    content: str
    role: str = "assistant"
    refusal: None = None


class Choice(msgspec.Struct):
    """One choice (Bulkhead always answers exactly one)."""

    message: AssistantMessage
    finish_reason: str
    index: int = 0
    logprobs: None = None


class CompletionUsage(msgspec.Struct):
    """Token usage, OpenAI names."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class BulkheadInfo(msgspec.Struct):
    """Bulkhead's extras: who answered, the trace, and how much history was left out."""

    provider: str
    trace_id: str
    history_dropped: int


class ChatCompletion(msgspec.Struct):
    """`object: chat.completion`, plus `citations` (the sources the answer cites)."""

    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    citations: list[Citation]
    bulkhead: BulkheadInfo
    object: str = "chat.completion"


class ModelCard(msgspec.Struct):
    """One entry of `GET /v1/models`."""

    id: str
    created: int = 0
    owned_by: str = "bulkhead"
    object: str = "model"


class ModelList(msgspec.Struct):
    """`GET /v1/models`."""

    data: list[ModelCard]
    object: str = "list"
