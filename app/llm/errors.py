"""Mapping the SDKs' exceptions to `ProviderError` reasons the router acts on.

Both SDKs raise the same shapes (status errors with a response, timeout and connection
errors), but a stream broken mid-body can surface as a bare `httpx2` transport error and a
malformed chunk as a bare `JSONDecodeError`, so those are handled here too.

The connection pools use the SDKs' aiohttp transport (`app/llm/clients.py`), whose vendored
exception map turns every `aiohttp.ClientConnectionError` into `httpx2.ConnectTimeout`, a
refused connection and a server hanging up included. So the root cause decides first: a
refused connection, a connection dropped mid-response, then a real timeout.
"""

from __future__ import annotations

import email.utils
import json
import time

import aiohttp
import anthropic
import httpx2
import msgspec
import openai
import pydantic

from app.llm.keys import scrub
from app.llm.provider import ProviderError

_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
_TIMEOUTS = (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)
_CONNECTION = (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)
# The connection went away after the request was sent: before the headers or mid-body.
_CUT = (httpx2.RemoteProtocolError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)
_MALFORMED = (
    json.JSONDecodeError,
    msgspec.DecodeError,
    pydantic.ValidationError,
    openai.APIResponseValidationError,
    anthropic.APIResponseValidationError,
)
_CONTEXT_HINTS = (
    "context_length_exceeded",
    "context length",
    "prompt is too long",
    "too many tokens",
)


def retry_after_seconds(headers: httpx2.Headers) -> float | None:
    """The wait a 429/503 asks for: `retry-after-ms`, `retry-after` seconds or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _caused_by(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def classify(exc: BaseException, *, key: str) -> ProviderError:
    """A `ProviderError` for an SDK exception, its message scrubbed of `key`."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, _STATUS_ERRORS):
        status = exc.status_code
        message = scrub(f"HTTP {status}: {exc.message}", key)
        if status == 429:
            reason = "rate_limited"
        elif status in (401, 403):
            reason = "auth"
        elif status >= 500:
            reason = "server_error"
        elif status == 400 and any(
            h in str(exc.body).lower() + exc.message.lower() for h in _CONTEXT_HINTS
        ):
            reason = "context_length"
        elif status in (408, 409):
            reason = "timeout" if status == 408 else "server_error"
        else:
            reason = "bad_request"
        return ProviderError(
            message,
            reason=reason,
            retry_after=retry_after_seconds(exc.response.headers),
            status=status,
        )
    if isinstance(exc, _TIMEOUTS + _CONNECTION):
        if _caused_by(exc, ConnectionRefusedError):
            return ProviderError("connection refused", reason="connection_refused")
        if _caused_by(exc, _CUT):
            return ProviderError(
                "the provider closed the connection mid-response", reason="stream_interrupted"
            )
    if isinstance(exc, _TIMEOUTS) or _caused_by(exc, TimeoutError):
        return ProviderError("the provider did not answer in time", reason="timeout")
    if isinstance(exc, _CONNECTION):
        return ProviderError(scrub(f"connection error: {exc}", key), reason="connection_error")
    if isinstance(exc, _MALFORMED):
        return ProviderError("the provider sent a malformed response", reason="malformed_response")
    raise exc
