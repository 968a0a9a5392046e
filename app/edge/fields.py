"""Naming the offending field: the `errors` entries and `detail` of every refusal.

An entry is `{"key": "documents[0].metadata.x", "source": "body", "message": "..."}`: `key` is
the field's JSON path (or the parameter's name), `source` where it was sent (`body`, `query`,
`path`, `header`), never an internal name. Depends on nothing else in the service, so
`app.problems` can use it.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.exceptions import ValidationException

MAX_NAMED_ERRORS = 5
"""Field errors spelled out in `detail` (all of them are in `errors`)."""


def field_error(key: str, message: str, *, source: str) -> dict[str, Any]:
    """One entry of a problem's `errors`: which field, where it was sent, what is wrong."""
    return {"key": key, "source": source, "message": message}


# Litestar's messages end in " - at `$.documents[0].title`" (split off already) or carry the
# path inside; msgspec's own wording is kept, it is clear.
_AT = re.compile(r"\s*-?\s*at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def _source(raw: Any) -> str:
    # Litestar hands over `ParamType.QUERY`; callers see the plain word.
    value = str(getattr(raw, "value", raw) or "body")
    return value if value in _SOURCES else "body"


def _key(raw_key: str | None, message: str, source: str) -> str:
    key = raw_key or ""
    if source == "body":
        # The handler's parameter is `data`: the caller knows its body, not our name for it.
        key = re.sub(r"^data(?=$|[.\[])\.?", "", key)
    if match := _AT.search(message):
        inner = match.group(1)
        if inner:
            key = f"{key}.{inner}" if key else inner
    if match := _UNKNOWN.search(message):
        key = f"{key}.{match.group(1)}" if key else match.group(1)
    return key or ("body" if source == "body" else source)


def validation_errors(exc: ValidationException) -> list[dict[str, Any]]:
    """Litestar's validation failures as `{key, source, message}` entries naming each field."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors: list[dict[str, Any]] = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = _AT.sub("", str(item.get("message", "invalid value"))).strip()
        source = _source(item.get("source"))
        key = _key(item.get("key"), str(item.get("message", "")), source)
        if key == "body" and message.strip("'") == "data":
            message = "a JSON body is required"  # Litestar names the missing parameter
        errors.append(field_error(key, message or "invalid value", source=source))
    return errors or [field_error("body", str(exc.detail), source="body")]


def describe(errors: list[dict[str, Any]]) -> str:
    """A `detail` that names the fields: "filter.x: Expected `str`, got `int`; ..."."""
    named = [f"{e['key']}: {e['message']}" for e in errors[:MAX_NAMED_ERRORS]]
    more = len(errors) - MAX_NAMED_ERRORS
    return "; ".join(named) + (f"; and {more} more" if more > 0 else "")


def msgspec_errors(exc: Exception, *, root: str = "", source: str = "body") -> list[dict[str, Any]]:
    """A msgspec validation error as one entry naming its field.

    "Expected `int`, got `str` - at `$.top_k`" names `top_k`; below `root` (`files[0]`) when
    given.
    """
    text = str(exc)
    message, _, _ = text.partition(" - at `")
    key = _key(None, text, source)
    if key == source == "body" and root:
        key = root
    elif root:
        key = f"{root}.{key}"
    return [field_error(key, message.strip() or "invalid value", source=source)]


MAX_DETAIL_CHARS = 1_000
MAX_MESSAGE_CHARS = 300
# "documents[0].title: at most 500 characters", "files[0] ('a.txt'): no text found".
_LEADING_KEY = re.compile(
    r"^(?P<key>[A-Za-z_][A-Za-z0-9_.\[\]-]*)(?: \([^)]*\))?: (?P<message>.+)$", re.S
)


def bound(text: str, limit: int) -> str:
    """`text` cut to `limit` characters: an error never echoes a megabyte the client sent."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def errors_from_detail(detail: str, *, source: str = "body") -> tuple[str, list[dict[str, Any]]]:
    """The field a refusal's `detail` names, as an `errors` entry (and the detail naming it).

    The service writes "field: message"; msgspec writes "message - at `$.field`". Either way
    the field becomes `errors[0].key`, and `detail` leads with it.

    Returns:
        The detail (rewritten to lead with the field) and the entries; no entries when the
        detail names no field.
    """
    if match := _LEADING_KEY.match(detail):
        key, message = match["key"], match["message"]
        return detail, [field_error(key, bound(message, MAX_MESSAGE_CHARS), source=source)]
    if _AT.search(detail) or _UNKNOWN.search(detail):
        (error,) = msgspec_errors(Exception(detail), source=source)
        if error["key"] != source:
            return f"{error['key']}: {error['message']}", [error]
    return detail, []
