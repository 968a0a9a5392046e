"""`POST /v1/chat/completions` and `GET /v1/models`: the OpenAI-compatible surface.

A frontend written for OpenAI points its SDK's `base_url` at Bulkhead and passes a Bulkhead
credential (end-user JWT, service token or `bk_` API key) as the api key. Each request is
answered like `/v1/chat`: retrieval in the caller's scope, the tenant's chain, citations (in an
extra `citations` field). The client sends its own history in `messages`, so nothing is stored
as a conversation; usage is recorded as for `/v1/chat`.

Errors are problem+json like every other endpoint, with an extra OpenAI-shaped `error` member
(`message`, `type`, `code`, `param`) so the `openai` SDK surfaces the code and message. A stream
that breaks after content ends with an OpenAI-style `{"error": ...}` event and no `[DONE]`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import JSONBody
from litestar.response import ServerSentEventMessage

from app.chat.completions_schemas import (
    UNSUPPORTED_PARAMETERS,
    AssistantMessage,
    BulkheadInfo,
    ChatCompletion,
    Choice,
    CompletionsRequest,
    CompletionUsage,
    ModelCard,
    ModelList,
)
from app.chat.controllers import EventStream
from app.chat.grounding import citation
from app.chat.schemas import Citation
from app.chat.service import Ask, ChatService, ChatStream
from app.edge.guards import ensure_own_tenant, requires
from app.edge.handlers import handle_api_error, handle_http_exception, handle_unexpected
from app.llm.provider import HistoryTurn
from app.problems import ApiError, ValidationFailed
from app.tenancy.scope import Role, TenantScope

MAX_INSTRUCTION_CHARS = 16_000
_PATH = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
_OPENAI_FINISH = {"stop", "length", "content_filter", "tool_calls"}
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


class UnsupportedParameter(ValidationFailed):
    """An OpenAI parameter Bulkhead does not honour: refused, never silently ignored."""

    code, title = "unsupported_parameter", "Unsupported parameter"

    def __init__(self, detail: str, *, param: str) -> None:
        super().__init__(detail)
        self.param = param


class InvalidParameter(ValidationFailed):
    """A malformed field; `param` names it (`messages[0].role`)."""

    def __init__(self, detail: str, *, param: str | None) -> None:
        super().__init__(detail)
        self.param = param


def parse_request(body: dict[str, Any]) -> CompletionsRequest:
    """Validate the body: unsupported OpenAI parameters and unknown fields are refused.

    Raises:
        UnsupportedParameter: An OpenAI parameter Bulkhead does not serve.
        InvalidParameter: Anything else that does not fit the schema.
    """
    for name in sorted(body):
        if name in UNSUPPORTED_PARAMETERS:
            raise UnsupportedParameter(
                f"{name!r} is not supported by Bulkhead's chat completions (the tenant's"
                " manifest decides the model's settings); remove it",
                param=name,
            )
    try:
        return msgspec.convert(body, CompletionsRequest)
    except msgspec.ValidationError as exc:
        raise InvalidParameter(str(exc), param=_param(str(exc))) from None


def _param(message: str) -> str | None:
    """The field a msgspec error names: `messages[0].role`, `messages[0].name`, `top_p`."""
    found = _PATH.search(message)
    path = found.group(1) if found else ""
    unknown = _UNKNOWN.search(message)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    return path or None


def to_ask(request: CompletionsRequest) -> Ask:
    """The question (the last message, from the user), its history and instructions.

    Raises:
        InvalidParameter: No final user message, an empty one, or over-long instructions.
    """
    instructions = "\n\n".join(
        m.text() for m in request.messages if m.role in ("system", "developer")
    )
    if len(instructions) > MAX_INSTRUCTION_CHARS:
        raise InvalidParameter(
            f"system/developer messages: at most {MAX_INSTRUCTION_CHARS} characters in all",
            param="messages",
        )
    turns = [m for m in request.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user" or not turns[-1].text().strip():
        raise InvalidParameter(
            "messages: the last user or assistant message must be a non-empty user message",
            param="messages",
        )
    history = tuple(
        HistoryTurn("assistant" if m.role == "assistant" else "user", m.text()) for m in turns[:-1]
    )
    return Ask(
        message=turns[-1].text(),
        top_k=request.top_k,
        raw_filter=request.filter,
        history=history,
        instructions=instructions,
        model=request.model,
        store=False,
    )


def _finish(reason: str) -> str:
    reason = _FINISH.get(reason, reason)
    return reason if reason in _OPENAI_FINISH else "stop"


def _encode(payload: dict[str, Any]) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=msgspec.json.encode(payload).decode())


async def _chunks(
    stream: ChatStream, *, requested_model: str, include_usage: bool
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """`/v1/chat`'s events as OpenAI `chat.completion.chunk`s, then `[DONE]` (or an error)."""
    created = int(time.time())
    completion_id = f"chatcmpl-{stream.message_id.hex}"
    citations: list[dict[str, Any]] = []

    def chunk(
        delta: dict[str, Any], finish: str | None = None, model: str = requested_model
    ) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    async for name, data in stream.events:
        if name == "meta":
            yield _encode(chunk({"role": "assistant", "content": ""}))
        elif name == "citations":
            citations = data["citations"]
        elif name == "delta":
            yield _encode(chunk({"content": data["text"]}))
        elif name == "done":
            last = chunk({}, _finish(data["finish_reason"]), data["model"])
            last["citations"] = citations
            last["bulkhead"] = {"provider": data["provider"], "trace_id": stream.trace_id}
            yield _encode(last)
            if include_usage:
                usage = data["usage"]
                final = chunk({}, model=data["model"])
                final["choices"] = []
                final["usage"] = {
                    "prompt_tokens": usage["input_tokens"],
                    "completion_tokens": usage["output_tokens"],
                    "total_tokens": usage["input_tokens"] + usage["output_tokens"],
                }
                yield _encode(final)
            yield ServerSentEventMessage(data="[DONE]")
        elif name == "error":
            # The SDK raises `APIError` on this payload; with no `[DONE]` the break is visible
            # to any client, never a clean end.
            error = {"message": data["message"], "type": "server_error", "code": data["code"]}
            yield _encode({"error": {**error, "param": None}})
            return


def _openai_error(response: Response[Any], exc: Exception) -> Response[Any]:
    body = response.content
    if isinstance(body, dict):
        status = response.status_code or 500
        fallback = "server_error" if status >= 500 else "invalid_request_error"
        kind = _ERROR_TYPES.get(status, fallback)
        body["error"] = {
            "message": body.get("detail", ""),
            "type": kind,
            "code": body.get("code"),
            "param": getattr(exc, "param", None),
        }
    return response


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return _openai_error(handle_api_error(request, exc), exc)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _openai_error(handle_http_exception(request, exc), exc)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _openai_error(handle_unexpected(request, exc), exc)


class CompletionsController(Controller):
    """`/v1/chat/completions` and `/v1/models` (OpenAI-compatible)."""

    path = "/v1"
    exception_handlers = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }

    @post("/chat/completions", guards=[requires(Role.CHAT)], status_code=200)
    async def create(
        self,
        data: JSONBody[dict[str, Any]],
        request: Request[TenantScope, Any, Any],
        chat: NamedDependency[ChatService],
    ) -> ChatCompletion | EventStream:
        """Answer the last user message over the caller's documents, OpenAI-style."""
        caller = request.user  # not the `caller` dependency: see ChatController.chat
        params = parse_request(data)
        ensure_own_tenant(caller, params.tenant_id)
        ask = to_ask(params)
        if params.stream:
            started = await chat.stream_answer(scope=caller, ask=ask)
            include_usage = bool(params.stream_options and params.stream_options.include_usage)
            return EventStream(
                _chunks(started, requested_model=params.model, include_usage=include_usage),
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        answer = await chat.answer(scope=caller, ask=ask)
        return ChatCompletion(
            id=f"chatcmpl-{answer.message_id.hex}",
            created=int(time.time()),
            model=answer.model,
            choices=[
                Choice(AssistantMessage(answer.answer), finish_reason=_finish(answer.finish_reason))
            ],
            usage=CompletionUsage(
                prompt_tokens=answer.input_tokens,
                completion_tokens=answer.output_tokens,
                total_tokens=answer.input_tokens + answer.output_tokens,
            ),
            citations=[Citation(**citation(c.marker, c.hit)) for c in answer.citations],
            bulkhead=BulkheadInfo(
                provider=answer.provider,
                trace_id=answer.trace_id,
                history_dropped=answer.history_dropped,
            ),
        )

    @get("/models", guards=[requires(Role.CHAT)])
    async def models(
        self, caller: NamedDependency[TenantScope], chat: NamedDependency[ChatService]
    ) -> ModelList:
        """The models a request may name: `auto` (the tenant's chain) and each chain entry."""
        return ModelList(data=[ModelCard(id=m) for m in chat.chains.models(caller.tenant_id)])
