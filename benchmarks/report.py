"""Rendering a run: the table on stdout and the JSON record in `benchmarks/results/`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = (
    ("target", "<14"),
    ("rps", ">9"),
    ("p50_ms", ">8"),
    ("p90_ms", ">8"),
    ("p99_ms", ">8"),
    ("errors", ">7"),
    ("rps/floor", ">10"),
    ("p99-floor_ms", ">13"),
    ("server_cpu", ">11"),
    ("client_cpu", ">11"),
)


@dataclass(frozen=True, slots=True)
class Measurement:
    """A target's name and the load generator's figures for it."""

    target: str
    result: LoadResult


def table(measurements: list[Measurement], *, floor: str) -> str:
    """The results table, each row compared with the `floor` row."""
    base = next((m.result for m in measurements if m.target == floor), None)
    lines = ["  ".join(f"{name:{fmt}}" for name, fmt in COLUMNS)]
    for m in measurements:
        r = m.result
        ratio = f"{r.rps / base.rps:.3f}" if base and base.rps else "-"
        extra = f"{r.p99_ms - base.p99_ms:+.2f}" if base else "-"
        cells = (
            m.target,
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.errors:,}",
            ratio,
            extra,
            f"{r.server_cpu:.2f}",
            f"{r.client_cpu:.2f}",
        )
        lines.append("  ".join(f"{c:{fmt}}" for c, (_, fmt) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


def error_banner(measurements: list[Measurement]) -> str | None:
    """A loud warning naming every target that had errors, or None when there were none."""
    failing = [m for m in measurements if m.result.errors]
    if not failing:
        return None
    lines = ["!" * 78, "!!! THIS RUN HAD ERRORS: its figures do not describe a healthy service."]
    for m in failing:
        r = m.result
        lines.append(f"!!! {m.target}: {r.errors:,} of {r.requests:,} requests failed {r.statuses}")
        lines.extend(f"!!!   e.g. {sample[:300]}" for sample in r.error_samples[:3])
    lines.append("!" * 78)
    return "\n".join(lines)


def write_json(record: dict[str, Any], measurements: list[Measurement]) -> Path:
    """Write the run to `benchmarks/results/<UTC timestamp>.json`; return the path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{stamp}.json"
    record = {
        **record,
        "timestamp": stamp,
        "targets": [{"target": m.target, **asdict(m.result)} for m in measurements],
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
