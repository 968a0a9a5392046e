"""`python scripts/bench.py [options]`: the benchmark harness (same as `python -m benchmarks`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import main

if __name__ == "__main__":
    raise SystemExit(main())
