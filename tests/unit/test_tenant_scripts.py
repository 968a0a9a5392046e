"""The thin `scripts/tenants.py` entry point exposes the same commands as `bulkhead tenants`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_script_wraps_the_tenants_group() -> None:
    result = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "scripts" / "tenants.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    for command in ("apply", "rotate-key", "offboard"):
        assert command in result.stdout
