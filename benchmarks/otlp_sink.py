"""An OTLP/HTTP receiver that accepts and discards: the collector a benchmarked Bulkhead exports to.

With it the benchmark pays what a deployment pays for telemetry (building, batching, encoding
and sending the sampled spans and the metrics), without a collector's own CPU in the figures.
Served by uvicorn: `uvicorn --factory benchmarks.otlp_sink:app`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]


class OtlpSink:
    """Answers every POST with 200 and an empty protobuf body; counts what it received."""

    def __init__(self) -> None:
        self.exports: dict[str, int] = {}

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        """Read the whole body, then answer (an empty Export*ServiceResponse is zero bytes)."""
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = bool(message.get("more_body"))
        path = scope["path"]
        self.exports[path] = self.exports.get(path, 0) + 1
        body = str(self.exports).encode() if scope["method"] == "GET" else b""
        headers = [(b"content-type", b"application/x-protobuf")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def app() -> OtlpSink:
    """The uvicorn factory."""
    return OtlpSink()
