"""A minimal keep-alive HTTP/1.1 client connection for the load generator.

One request at a time per connection (no pipelining), requests pre-serialised to bytes and
responses parsed by `httptools` (the C parser uvicorn uses). On this machine it drives the floor
app at ~3,700 RPS using a quarter of a core, where `httpx.AsyncClient` saturates a whole core at
~340 RPS, which would make the client, not the server, the thing measured.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools


def build_request(
    method: str, host: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """Serialise one request; `Content-Length` is added when there is a body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection(asyncio.Protocol):
    """A client connection answering `request` calls one after another."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body = bytearray()
        self.reusable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect to `host:port`."""
        _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        return protocol

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send a serialised request and return the status and body of its response.

        A caller that gives up waiting (a timeout) must `close` the connection.

        Raises:
            ConnectionError: The connection closed or the response did not parse; the
                connection is no longer `reusable`.
        """
        if self._transport is None or not self.reusable:
            raise ConnectionError("connection is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._waiter = waiter
        try:
            self._transport.write(raw)
            return await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Close the connection."""
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # uvloop's TCP transport implements asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        """Feed the parser."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"unparseable response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the pending request, if any."""
        self.reusable = False
        self._fail(ConnectionError(f"connection lost: {exc or 'closed by server'}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        """A response starts."""
        self._body.clear()

    def on_body(self, body: bytes) -> None:
        """Accumulate the body."""
        self._body += body

    def on_message_complete(self) -> None:
        """Hand the response to the waiting request."""
        if not self._parser.should_keep_alive():
            self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._parser.get_status_code(), bytes(self._body)))
