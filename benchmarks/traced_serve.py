"""`bulkhead serve` with `tracemalloc` on, for `benchmarks.soak --heap`.

Tells Python-heap growth from native growth (Qdrant Edge is Rust, several SDKs have C parts):
on SIGUSR1 the process writes the size of the Python heap `tracemalloc` traces to the JSON file
named by `SOAK_HEAP_FILE`; on SIGUSR2 it also takes a snapshot and writes the source lines whose
allocations grew most since the previous SIGUSR2. Each answer carries the number of signals
received so far, so the reader knows the file answers its own signal.

Tracing slows every allocation: figures from a `--heap` run are for where memory goes, not
for throughput.
"""

from __future__ import annotations

import json
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

from app.cli import main as bulkhead

TOP_LINES = 12


class HeapReporter:
    """Answers the soak's signals with the traced heap's size and, on SIGUSR2, its growth."""

    def __init__(self, path: Path) -> None:
        """Write answers to `path` (replaced atomically on each signal)."""
        self.path = path
        self.signals = 0
        self._previous: tracemalloc.Snapshot | None = None

    def size(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1: the traced heap's current size."""
        self._answer({})

    def growth(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR2: the size, and the lines that grew most since the previous SIGUSR2."""
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        top: list[str] = []
        if self._previous is not None:
            stats = snapshot.compare_to(self._previous, "lineno")
            top = [str(stat) for stat in stats[:TOP_LINES]]
        self._previous = snapshot
        self._answer({"top": top})

    def _answer(self, extra: dict[str, object]) -> None:
        self.signals += 1
        current, _ = tracemalloc.get_traced_memory()
        staged = self.path.with_suffix(".tmp")
        staged.write_text(json.dumps({"signals": self.signals, "traced": current, **extra}))
        staged.replace(self.path)


def main() -> None:
    """Trace, install the handlers, then run `bulkhead serve` (exits when it does)."""
    tracemalloc.start()
    reporter = HeapReporter(Path(os.environ["SOAK_HEAP_FILE"]))
    signal.signal(signal.SIGUSR1, reporter.size)
    signal.signal(signal.SIGUSR2, reporter.growth)
    bulkhead(args=["serve"], prog_name="bulkhead")


if __name__ == "__main__":
    main()
