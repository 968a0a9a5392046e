"""The HTTP server's share of the edge: a deadline on request headers.

uvicorn closes idle keep-alive connections but puts no limit on how long a client may take
to send a request's headers once it has started (one byte every few seconds holds a
connection and its memory forever). This protocol, uvicorn's httptools one with a timer,
answers `408 request_timeout` and closes the connection when the headers are not complete
within `header_read_timeout_seconds` of the connection opening or the request starting.
Body timeouts are enforced in the ASGI layer (`app.edge.deadline`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import HttpSettings


def _timeout_response(seconds: float) -> bytes:
    body = msgspec.json.encode(
        {
            "type": "urn:bulkhead:problem:request_timeout",
            "title": "Request timeout",
            "status": 408,
            "code": "request_timeout",
            "detail": f"the request headers did not arrive within {seconds:g} s",
        }
    )
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    header_timeout_seconds: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: the first request's headers are due."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """A request starts (on a kept-alive connection too): its headers are due."""
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        """The headers are in; from here the body deadlines (ASGI layer) apply."""
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_seconds, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its own deadlines apply
        self.transport.write(_timeout_response(self.header_timeout_seconds))
        self.transport.close()


def server_options(http: HttpSettings) -> dict[str, Any]:
    """uvicorn.run() options that put the edge's header deadline on every connection."""
    protocol = type(
        "HeaderDeadlineProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout_seconds": http.header_read_timeout_seconds},
    )
    return {"http": protocol}
