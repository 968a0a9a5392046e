"""Thin entry point for tenant operations: `python scripts/tenants.py apply tenants/acme.yaml`.

Same as `bulkhead tenants ...` (apply, rotate-key, offboard); the logic lives in
`app/tenancy/`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from app.lifecycle.cli import tenants

    tenants(prog_name="scripts/tenants.py")
