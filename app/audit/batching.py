"""BatchWriter: a bounded queue drained in batches by one background task.

Shared by the audit trail (which waits for room: back-pressure) and the auth-failure log
(which drops when full). Subclasses decide how a row is queued, how a batch is written, and
what becomes of rows still unwritten when the writer is closed with a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

Row = TypeVar("Row")


class BatchWriter(Generic[Row]):
    """Owns the queue, the writer task and its lifecycle; `_handle` writes one batch."""

    def __init__(
        self, *, name: str, buffer_size: int, batch_size: int, flush_interval: float
    ) -> None:
        self._name = name
        self._queue: asyncio.Queue[Row] = asyncio.Queue(maxsize=buffer_size)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._task: asyncio.Task[None] | None = None
        self._batch: list[Row] = []
        """The batch being handled; `_handle` removes the rows it has written for good."""

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def flush(self) -> None:
        """Wait until every queued row has been handled (or the writer has stopped)."""
        if self._task is None or self._task.done():
            return
        joined = asyncio.ensure_future(self._queue.join())
        await asyncio.wait({joined, self._task}, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()

    async def close(self, *, grace_seconds: float | None = None) -> None:
        """Handle what is queued (for at most `grace_seconds`), then stop.

        Rows not written by then (the database is down, say) go to `_abandon`, which
        reports them: they are never dropped silently.
        """
        try:
            async with asyncio.timeout(grace_seconds):
                await self.flush()
        except TimeoutError:
            pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        leftover = list(self._batch)
        self._batch = []
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
            self._queue.task_done()
        if leftover:
            self._abandon(leftover)

    async def _handle(self, batch: list[Row]) -> None:
        raise NotImplementedError

    def _abandon(self, rows: list[Row]) -> None:
        """Rows still unwritten when the writer closed (after its grace period)."""
        raise NotImplementedError

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            # One deadline for the whole batch (`asyncio.wait_for` per row made a task each).
            try:
                async with asyncio.timeout_at(loop.time() + self._flush_interval):
                    while len(batch) < self._batch_size:
                        if self._queue.empty():
                            batch.append(await self._queue.get())
                        else:
                            batch.append(self._queue.get_nowait())
            except TimeoutError:
                pass
            taken = len(batch)
            self._batch = batch
            await self._handle(batch)
            self._batch = []
            for _ in range(taken):
                self._queue.task_done()
