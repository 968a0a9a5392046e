"""`python -m benchmarks`: run the benchmark harness."""

from benchmarks.harness import main

raise SystemExit(main())
