"""Giving back what replaced and deleted chunks leave in a Qdrant Edge shard.

The embedded engine has no background optimizer: a deleted point is only marked deleted, and
its vectors, payload and index entries stay in the segment, in memory and on disk, until the
shard is optimized; the write-ahead log grows until the shard is flushed. Every re-ingestion
writes a document's chunks under new point ids (the version is part of them) and deletes the
old ones, so without upkeep a service that re-ingests the same documents grows for ever:
~17 KiB per re-ingested four-chunk document in `benchmarks/soak.py`, at the served process.

`ShardUpkeep` counts the chunks written; every `UPKEEP_EVERY_CHUNKS` of them it runs the
engine's optimizers and flushes the shard. `VACUUM_ONLY` is the optimizer configuration the
shard is opened with: the indexing optimizer is off (`indexing_threshold` 0), so upkeep only
rebuilds a segment once `deleted_threshold` (the engine's 0.2) of its points are deleted, and
segments stay plain, as the service has always searched them (building the sparse index on
every pass halved the ingestion rate and slowed searches, see `benchmarks/README.md`).

A vacuum rebuilds the whole segment and the binding holds the GIL meanwhile, so the process
pauses for a time that grows with the shard (~6 s at 50,000 chunks on 2 busy cores); it
happens once per fifth of the segment replaced. A flush pauses it for ~0.1-0.3 s per 5,000
chunks written.
"""

from __future__ import annotations

import asyncio
import logging

import qdrant_edge as qe

UPKEEP_EVERY_CHUNKS = 5_000
VACUUM_ONLY = qe.EdgeOptimizersConfig(indexing_threshold=0)

_log = logging.getLogger(__name__)


class ShardUpkeep:
    """Counts a shard's writes and, when upkeep is due, runs it in the background."""

    def __init__(
        self,
        shard: qe.EdgeShard,
        write_lock: asyncio.Lock,
        *,
        every_chunks: int = UPKEEP_EVERY_CHUNKS,
    ) -> None:
        """Upkeep for `shard`, whose writers hold `write_lock`, every `every_chunks` chunks."""
        self._shard = shard
        self._write_lock = write_lock
        self._every = every_chunks
        self._since = 0
        self._task: asyncio.Task[None] | None = None

    def wrote(self, chunks: int) -> None:
        """Count `chunks` chunks written or removed; start a pass when one is due.

        One pass at a time: chunks written while it runs count towards the next.
        """
        self._since += chunks
        if self._since >= self._every and (self._task is None or self._task.done()):
            self._since = 0
            self._task = asyncio.create_task(self._pass())

    async def _pass(self) -> None:
        try:
            # Under the write lock: no write lands in a segment while it is being rebuilt.
            async with self._write_lock:
                await asyncio.to_thread(self._run)
        except Exception:
            # Nothing is lost: the shard is as it was, and the next pass tries again.
            _log.exception("Qdrant Edge upkeep (optimize, flush) failed")

    def _run(self) -> None:
        self._shard.optimize()
        self._shard.flush()

    async def settle(self) -> None:
        """Wait for a running pass to finish (before the shard is closed)."""
        if self._task is not None and not self._task.done():
            # `wait`, not `await`: a pass cancelled at loop shutdown must not stop the close.
            await asyncio.wait({self._task})
