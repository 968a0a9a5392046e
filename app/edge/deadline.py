"""Time limits on a request body: a client cannot hold a connection by sending slowly.

A request whose Content-Length promises more than it sends would otherwise keep its handler
waiting for as long as the client likes. The body must arrive within `total_seconds` of the
request's start, and no gap between two pieces may exceed `idle_seconds`; otherwise the
request is answered `408 request_timeout` and the connection closed. Once the body is complete
the channel is passed through untouched (streaming responses listen on it for disconnects).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar.types import Receive

from app.edge.errors import RequestTimeout


class BodyDeadline:
    """A `receive` callable that enforces the body's time limits (see the module doc)."""

    def __init__(self, receive: Receive, *, total_seconds: float, idle_seconds: float) -> None:
        self._receive = receive
        self._deadline = time.monotonic() + total_seconds
        self._total = total_seconds
        self._idle = idle_seconds
        self._complete = False

    async def __call__(self) -> Any:
        """The next message; RequestTimeout when the body's next piece comes too late.

        Raises:
            RequestTimeout: The body stalled for `idle_seconds` or overran `total_seconds`.
        """
        if self._complete:
            return await self._receive()
        remaining = self._deadline - time.monotonic()
        wait = min(self._idle, remaining)
        if wait <= 0:
            raise self._timeout()
        try:
            message = await asyncio.wait_for(self._receive(), wait)
        except TimeoutError:
            raise self._timeout() from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._complete = True
        return message

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(
            f"the request body did not arrive in time (each piece within {self._idle:g} s,"
            f" all of it within {self._total:g} s)"
        )
