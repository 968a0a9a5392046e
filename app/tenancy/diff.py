"""A readable diff between two manifests' JSON forms, generic over their structure.

It walks whatever `TenantManifest.to_json()` produces, so fields added to the manifest later
show up in `bulkhead tenants apply` output without touching this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Change:
    """One changed leaf: `+` added, `-` removed, `~` modified."""

    op: str
    path: str
    old: Any = None
    new: Any = None

    def render(self) -> str:
        """`~ limits.requests_per_minute: 600 -> 100` style line."""
        if self.op == "+":
            return f"+ {self.path}: {_show(self.new)}"
        if self.op == "-":
            return f"- {self.path}: {_show(self.old)}"
        return f"~ {self.path}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _leaves(op: str, value: Any, path: str) -> list[Change]:
    """An added or removed subtree as one change per leaf (empty containers stay whole)."""
    items: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        items = sorted(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    if not items:
        return [Change(op, path, old=value) if op == "-" else Change(op, path, new=value)]
    return [leaf for key, item in items for leaf in _leaves(op, item, _join(path, key))]


def manifest_diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Leaf-level changes turning `old` into `new` (dicts recursed by key, lists by index)."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[Change] = []
        for key in sorted(old.keys() | new.keys()):
            here = _join(path, key)
            if key not in old:
                changes.extend(_leaves("+", new[key], here))
            elif key not in new:
                changes.extend(_leaves("-", old[key], here))
            else:
                changes.extend(manifest_diff(old[key], new[key], here))
        return changes
    if isinstance(old, list) and isinstance(new, list):
        changes = []
        for index in range(max(len(old), len(new))):
            here = _join(path, index)
            if index >= len(old):
                changes.extend(_leaves("+", new[index], here))
            elif index >= len(new):
                changes.extend(_leaves("-", old[index], here))
            else:
                changes.extend(manifest_diff(old[index], new[index], here))
        return changes
    if old != new:
        return [Change("~", path or "(manifest)", old=old, new=new)]
    return []
