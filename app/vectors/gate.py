"""A readers-writer gate between searches and version switches inside one process.

Publishing a new version of a document takes two updates of the vector store (reveal the new
chunks, retire the old ones). A search that ran between them would see the document twice, or
not at all; the gate lets searches run concurrently with each other but never with a switch.
It is a plain asyncio construct: it orders coroutines of one event loop, which is all an
embedded shard has. The switch itself can then run in a worker thread, so a large document's
switch holds back searches only, not every request on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class VersionGate:
    """Many readers at once, or one switch; a waiting switch holds new readers back."""

    def __init__(self) -> None:
        self._readers = 0
        self._open = asyncio.Event()
        self._open.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._switch = asyncio.Lock()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Hold the gate open for one search."""
        while not self._open.is_set():
            await self._open.wait()
        self._readers += 1
        self._drained.clear()
        try:
            yield
        finally:
            self._readers -= 1
            if not self._readers:
                self._drained.set()

    @asynccontextmanager
    async def switching(self) -> AsyncIterator[None]:
        """Close the gate, wait for running searches to finish, and hold it for one switch."""
        async with self._switch:
            self._open.clear()
            try:
                await self._drained.wait()
                yield
            finally:
                self._open.set()
