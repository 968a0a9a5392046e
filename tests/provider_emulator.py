"""OpenAI- and Anthropic-compatible provider emulators on loopback, with injectable faults.

Speaks enough of both HTTP APIs for the official SDKs: OpenAI `POST /v1/chat/completions`
(plain and SSE streaming) and `POST /v1/embeddings`; Anthropic `POST /v1/messages` (plain and
streaming events). Usage fields look like the real ones. Embeddings are deterministic unit
vectors (words hashed into signed buckets, see `embedding`) of the requested `dimensions` or the
model's native size, as floats or base64 as asked, so texts sharing words are near neighbours.

Faults are chosen per request by a suffix on the model name, `<model>@<fault>[:<arg>][x<n>]`,
so concurrent tests never step on each other; `x<n>` makes only the first n calls with that
exact model string fail (retry-then-succeed). `--fault` sets a default for every request.

    429[:s]     rate limited, Retry-After s (default 1)
    500, 503    server error
    hang        accepts the request and never answers: no status, no headers (until the
                client gives up)
    stall       sends the status and headers (streaming: and the stream's opening event,
                no content), then nothing more (until the client gives up)
    slow[:s]    first token (or the whole answer) after s seconds (default 0.5)
    401         authentication error whose message echoes the key, as the real APIs do
    disconnect  the connection drops mid-body / mid-stream
    malformed   a body / stream chunk that is not JSON
    shape       a JSON body of the wrong shape (its lists, e.g. `choices`, become strings)
    context     400 context-length error;  400: another 400 (bad request)
    cite:a.b.c  not a fault: answers citing markers [a], [b], [c] in that order (`cite:4.1.9`)

A key containing `revoked` is refused with 401 too. Connection refused is a port with nothing
listening: `refused_url()`. `GET /_emulator/calls` counts calls per path (in process, `.keys`
counts them per API key); `POST /_emulator/reset` clears the counters.

    python tests/provider_emulator.py --port 8911 [--fault 503]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_FAULT = re.compile(
    r"^(?P<model>[^@]+)@(?P<fault>[a-z0-9]+)(?::(?P<arg>[0-9.]+))?(?:x(?P<n>\d+))?$"
)
ANSWER = "Hotel stays are reimbursed up to 180 euros per night [1]."


def answer_for(model: str) -> str:
    """The answer text: `ANSWER`, or for `<model>@cite:a.b.c` one sentence citing each marker."""
    match = _FAULT.match(model)
    if match is None or match["fault"] != "cite" or not match["arg"]:
        return ANSWER
    markers = [m for m in match["arg"].split(".") if m]
    return " ".join(f"Point {i} is in the documents [{m}]." for i, m in enumerate(markers, 1))


class Disconnect(Exception):
    """Raised inside the app to make the server drop the connection mid-body."""


class ProviderEmulator:
    """The ASGI app: both APIs, faults, per-path call counters."""

    def __init__(self, default_fault: str | None = None) -> None:
        self.default_fault = default_fault
        self.calls: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()
        """Calls per API key presented (key rotation tests check which key was used)."""
        # The latest request bodies, for tests that check what a provider was sent.
        self.bodies: deque[tuple[str, bytes]] = deque(maxlen=200)
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget every call."""
        with self._lock:
            self.calls.clear()
            self.keys.clear()
            self.bodies.clear()
            self._seen.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path == "/_emulator/calls":
            await _json(send, 200, dict(self.calls))
            return
        if path == "/_emulator/reset":
            self.reset()
            await _json(send, 200, {"ok": True})
            return
        body = await _body(receive)
        with self._lock:
            self.calls[path] += 1
            self.keys[_header(scope, b"x-api-key") or _bearer(scope)] += 1
            self.bodies.append((path, body))
        if path.endswith("/chat/completions"):
            await self._openai_chat(scope, receive, send, body)
        elif path.endswith("/embeddings"):
            await self._openai_embeddings(scope, receive, send, body)
        elif path.endswith("/messages"):
            await self._anthropic_messages(scope, receive, send, body)
        else:
            await _json(send, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def _fault(self, model: str) -> tuple[str, str | None, float | None]:
        """(base model, fault or None, fault argument)."""
        match = _FAULT.match(model)
        if match is None:
            return model, self.default_fault, None
        with self._lock:
            self._seen[model] += 1
            seen = self._seen[model]
        limit = match["n"]
        if limit is not None and seen > int(limit):
            return match["model"], None, None
        arg = match["arg"]
        number = float(arg) if arg and match["fault"] != "cite" else None
        return match["model"], match["fault"], number

    async def _pre_fault(
        self, api: str, fault: str | None, arg: float | None, key: str, receive: Receive, send: Send
    ) -> bool:
        """Answer the faults that happen before any body; True when the request is done."""
        if fault is None and "revoked" not in key:
            return False
        if fault == "hang":
            await _until_disconnect(receive)
            return True
        if fault == "401" or "revoked" in key:
            # The real APIs echo (part of) the key; the whole of it here, to test scrubbing.
            message = f"Incorrect API key provided: {key}"
            await _error(send, api, 401, "authentication_error", message, "invalid_api_key")
        elif fault == "429":
            retry = arg if arg is not None else 1
            await _error(
                send,
                api,
                429,
                "rate_limit_error",
                "Rate limit reached for requests",
                "rate_limit_exceeded",
                headers=[(b"retry-after", _num(retry).encode())],
            )
        elif fault in {"500", "503"}:
            kind = "api_error" if fault == "500" else "overloaded_error"
            await _error(send, api, int(fault), kind, "The server had an error", None)
        elif fault == "context":
            message = (
                "This model's maximum context length is 128000 tokens."
                if api == "openai"
                else "prompt is too long: 250000 tokens > 200000 maximum"
            )
            await _error(
                send, api, 400, "invalid_request_error", message, "context_length_exceeded"
            )
        elif fault == "400":
            await _error(send, api, 400, "invalid_request_error", "Invalid 'messages'", None)
        else:
            return False
        return True

    async def _openai_chat(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        request = json.loads(body or b"{}")
        model, fault, arg = self._fault(str(request.get("model", "")))
        if await self._pre_fault("openai", fault, arg, _bearer(scope), receive, send):
            return
        prompt = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
        answer = answer_for(str(request.get("model", "")))
        input_tokens, words = _tokens(prompt), answer.split(" ")
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": len(words),
            "total_tokens": input_tokens + len(words),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if fault == "slow":
            await asyncio.sleep(arg if arg is not None else 0.5)
        if fault == "stall" and not request.get("stream"):
            await _stall(send, receive, b"application/json")
            return
        if not request.get("stream"):
            message = {"role": "assistant", "content": answer, "refusal": None}
            await _json(
                send,
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_emulator",
                },
                fault=fault,
            )
            return
        await _start(send, 200, b"text/event-stream")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_emulator",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        await _sse(send, None, chunk({"role": "assistant", "content": ""}))
        if fault == "stall":
            await _until_disconnect(receive)
            return
        for i, word in enumerate(words):
            await _stream_fault(send, fault, i)
            await _sse(send, None, chunk({"content": word if i == 0 else " " + word}))
        await _sse(send, None, chunk({}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            final = chunk({}) | {"choices": [], "usage": usage}
            await _sse(send, None, final)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _openai_embeddings(
        self, scope: Scope, receive: Receive, send: Send, body: bytes
    ) -> None:
        request = json.loads(body or b"{}")
        model, fault, arg = self._fault(str(request.get("model", "")))
        if await self._pre_fault("openai", fault, arg, _bearer(scope), receive, send):
            return
        if fault == "slow":
            await asyncio.sleep(arg if arg is not None else 0.5)
        inputs = request.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else inputs
        dims = int(request.get("dimensions") or NATIVE_DIMENSIONS.get(model, 1536))
        as_base64 = request.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encoded(embedding(str(text), dims), as_base64),
            }
            for i, text in enumerate(inputs)
        ]
        tokens = sum(_tokens(str(t)) for t in inputs)
        await _json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            fault=fault,
        )

    async def _anthropic_messages(
        self, scope: Scope, receive: Receive, send: Send, body: bytes
    ) -> None:
        request = json.loads(body or b"{}")
        model, fault, arg = self._fault(str(request.get("model", "")))
        key = _header(scope, b"x-api-key") or _bearer(scope)
        if await self._pre_fault("anthropic", fault, arg, key, receive, send):
            return
        prompt = str(request.get("system", "")) + " ".join(
            str(m.get("content", "")) for m in request.get("messages", [])
        )
        answer = answer_for(str(request.get("model", "")))
        input_tokens, words = _tokens(prompt), answer.split(" ")
        ident = f"msg_{uuid.uuid4().hex[:24]}"
        if fault == "slow":
            await asyncio.sleep(arg if arg is not None else 0.5)
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": len(words),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if fault == "stall" and not request.get("stream"):
            await _stall(send, receive, b"application/json")
            return
        if not request.get("stream"):
            await _json(
                send,
                200,
                {
                    "id": ident,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": answer}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
                fault=fault,
            )
            return
        await _start(send, 200, b"text/event-stream")
        start = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage | {"output_tokens": 1},
        }
        await _sse(send, "message_start", {"type": "message_start", "message": start})
        if fault == "stall":
            await _until_disconnect(receive)
            return
        block = {"type": "text", "text": ""}
        await _sse(
            send,
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        await _sse(send, "ping", {"type": "ping"})
        for i, word in enumerate(words):
            await _stream_fault(send, fault, i, event="content_block_delta")
            delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
            await _sse(
                send,
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta},
            )
        await _sse(send, "content_block_stop", {"type": "content_block_stop", "index": 0})
        await _sse(
            send,
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
        )
        await _sse(send, "message_stop", {"type": "message_stop"})
        await send({"type": "http.response.body", "body": b""})


async def _stream_fault(
    send: Send, fault: str | None, index: int, event: str | None = None
) -> None:
    # Both stream faults strike after two content tokens have gone out.
    if index != 2:
        return
    if fault == "disconnect":
        raise Disconnect("emulated mid-stream disconnect")
    if fault == "malformed":
        prefix = f"event: {event}\n" if event else ""
        await send(
            {
                "type": "http.response.body",
                "body": f"{prefix}data: {{not json\n\n".encode(),
                "more_body": True,
            }
        )


NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_WORD = re.compile(r"[a-z0-9]+")


def embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for `text`: its words hashed into `dims` signed buckets.

    The same on every run and in every process (unlike `hash()`), and texts sharing words are
    close in cosine distance, so dense search over it ranks lexically related chunks first.
    """
    vector = [0.0] * dims
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dims
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return [v / norm for v in vector]


def _encoded(vector: list[float], as_base64: bool) -> list[float] | str:
    # The SDK asks for base64 (little-endian float32) unless told otherwise, as the API allows.
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _bearer(scope: Scope) -> str:
    return _header(scope, b"authorization").removeprefix("Bearer ")


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _stall(send: Send, receive: Receive, content_type: bytes) -> None:
    """Send a 200's status and headers, promise a body, and send none of it."""
    await _start(send, 200, content_type, [(b"content-length", b"4096")])
    await _until_disconnect(receive)


async def _start(
    send: Send, status: int, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    all_headers = [(b"content-type", content_type), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})


async def _json(
    send: Send,
    status: int,
    payload: Any,
    *,
    fault: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if fault == "shape" and isinstance(payload, dict):
        payload = {k: "?" if isinstance(v, list) else v for k, v in payload.items()}
    data = json.dumps(payload).encode()
    if fault == "malformed":
        data = b"{not json"
    length = [(b"content-length", str(len(data)).encode())]
    await _start(send, status, b"application/json", length + (headers or []))
    if fault == "disconnect":
        await send(
            {"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True}
        )
        raise Disconnect("emulated disconnect mid-body")
    await send({"type": "http.response.body", "body": data})


async def _error(
    send: Send,
    api: str,
    status: int,
    kind: str,
    message: str,
    code: str | None,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if api == "openai":
        payload: dict[str, Any] = {
            "error": {"message": message, "type": kind, "param": None, "code": code}
        }
    else:
        payload = {"type": "error", "error": {"type": kind, "message": message}}
    await _json(send, status, payload, headers=headers)


async def _sse(send: Send, event: str | None, payload: dict[str, Any]) -> None:
    prefix = f"event: {event}\n" if event else ""
    frame = f"{prefix}data: {json.dumps(payload)}\n\n".encode()
    await send({"type": "http.response.body", "body": frame, "more_body": True})


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_HELD: list[socket.socket] = []


@atexit.register
def _release_held() -> None:
    for sock in _HELD:
        sock.close()


def refused_url() -> str:
    """A loopback base URL where nothing listens: connecting is refused at once.

    The port stays bound (never listening) for the life of the process. A port merely closed
    could be picked as the ephemeral source port of the connect itself, and Linux then lets the
    socket connect to itself (TCP simultaneous open): no refusal, a flaky test.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


class EmulatorServer:
    """The emulator served by uvicorn in a background thread, for tests and benchmarks."""

    def __init__(self, default_fault: str | None = None, port: int | None = None) -> None:
        self.app = ProviderEmulator(default_fault)
        self.port = port or free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="provider-emulator", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL (the SDKs append `/chat/completions`, `/v1/messages`...)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> Counter[str]:
        """Calls per path since the last reset."""
        return self.app.calls

    def start(self) -> EmulatorServer:
        """Start serving; returns once the port accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("provider emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument("--fault", default=None, help="default fault for every request")
    args = parser.parse_args()
    print(
        f"provider emulator on http://127.0.0.1:{args.port}"
        f" (OpenAI base_url .../v1, Anthropic base_url ...), fault={args.fault}"
    )
    uvicorn.run(ProviderEmulator(args.fault), host="127.0.0.1", port=args.port, lifespan="off")


if __name__ == "__main__":
    main()
