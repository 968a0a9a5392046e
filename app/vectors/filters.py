"""Caller-supplied metadata filters: validated here, then nested under the forced conditions.

Grammar (docs/api.md): `{"key": value}` or `{"key": {"in": [v1, v2, ...]}}`, all keys ANDed.
Values are strings, integers or booleans. Keys name the document's own metadata only; reserved
keys (`tenant_id`, anything starting with `_bulkhead`) are refused, so a filter can narrow the
caller's view but never name or widen the tenant condition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.problems import ValidationFailed

METADATA_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
RESERVED_KEYS = frozenset({"tenant_id"})
RESERVED_PREFIX = "_bulkhead"
MAX_FILTER_KEYS = 16
MAX_IN_VALUES = 100
MAX_VALUE_CHARS = 500

Scalar = str | int | bool


@dataclass(frozen=True, slots=True)
class MetadataMatch:
    """`metadata[key]` equals one of `values`."""

    key: str
    values: tuple[Scalar, ...]


def is_reserved(key: str) -> bool:
    """Whether `key` belongs to Bulkhead rather than the tenant."""
    return key in RESERVED_KEYS or key.lower().startswith(RESERVED_PREFIX)


def check_metadata_key(key: str, *, where: str) -> None:
    """Refuse a metadata key that is reserved or malformed.

    Raises:
        ValidationFailed: The key is reserved or does not match `METADATA_KEY`.
    """
    if is_reserved(key):
        raise ValidationFailed(
            f"{where}: key {key!r} is reserved", errors=[{"key": where, "message": "reserved key"}]
        )
    if not METADATA_KEY.fullmatch(key):
        raise ValidationFailed(
            f"{where}: key {key!r} must match {METADATA_KEY.pattern}",
            errors=[{"key": where, "message": "invalid key"}],
        )


def _scalar(value: Any, *, where: str) -> Scalar:
    if isinstance(value, bool | int) and not isinstance(value, float):
        return value
    if isinstance(value, str) and len(value) <= MAX_VALUE_CHARS:
        return value
    raise ValidationFailed(
        f"{where}: values must be strings (≤ {MAX_VALUE_CHARS} chars), integers or booleans",
        errors=[{"key": where, "message": "invalid value"}],
    )


def parse_filter(raw: dict[str, Any] | None) -> tuple[MetadataMatch, ...]:
    """Validate a request's `filter` and return its conditions.

    Raises:
        ValidationFailed: Reserved or malformed keys, unknown operators, bad values.
    """
    if not raw:
        return ()
    if len(raw) > MAX_FILTER_KEYS:
        raise ValidationFailed(f"filter: at most {MAX_FILTER_KEYS} keys")
    matches: list[MetadataMatch] = []
    for key, condition in raw.items():
        where = f"filter.{key}"
        check_metadata_key(key, where=where)
        if isinstance(condition, dict):
            if set(condition) != {"in"} or not isinstance(condition["in"], list):
                raise ValidationFailed(
                    f"{where}: the only operator is {{'in': [...]}}",
                    errors=[{"key": where, "message": "unknown operator"}],
                )
            values = condition["in"]
            if not 1 <= len(values) <= MAX_IN_VALUES:
                raise ValidationFailed(f"{where}.in: between 1 and {MAX_IN_VALUES} values")
            matches.append(
                MetadataMatch(key, tuple(_scalar(v, where=f"{where}.in") for v in values))
            )
        else:
            matches.append(MetadataMatch(key, (_scalar(condition, where=where),)))
    return tuple(matches)
