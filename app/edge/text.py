"""What text may enter: the rules every string and JSON body is checked against.

Postgres `text` and `jsonb` cannot hold NUL (U+0000); Python strings can, and asyncpg fails
on them mid-transaction. JSON nested thousands deep exhausts msgspec's recursion (and later
Postgres's stack). Both are refused here, with the field named, before a handler runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from app.edge.errors import refuse_field

NUL = "\x00"
DEFAULT_MAX_JSON_DEPTH = 32
MAX_LABEL_CHARS = 64
"""A client-chosen key is quoted in an error at most this long."""


def label(key: str) -> str:
    """A client-chosen name fit to quote in an error: bounded, printable."""
    shown = "".join(c if c.isprintable() else "?" for c in key[:MAX_LABEL_CHARS])
    return shown + ("…" if len(key) > MAX_LABEL_CHARS else "")


def child(parent: str, key: str | int) -> str:
    """The JSON path of a member: `documents[0].metadata.x`."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{label(key)}" if parent else label(key)


def nul_refusal(key: str, *, source: str) -> Exception:
    """The refusal for a NUL character in the field `key`."""
    message = "contains a NUL character (U+0000), which cannot be stored"
    return refuse_field(key, message, source=source)


def check_text(value: str, *, key: str, source: str) -> None:
    """Refuse a string the service cannot store.

    Raises:
        ValidationFailed: `value` contains a NUL character.
    """
    if NUL in value:
        raise nul_refusal(key, source=source)


class JsonRules(msgspec.Struct, frozen=True):
    """How deep a JSON body may nest, and which string fields may carry NUL (dropped later)."""

    max_depth: int = DEFAULT_MAX_JSON_DEPTH
    nul_tolerant: tuple[str, ...] = ()
    """Regexes of JSON paths (`documents\\[\\d+\\]\\.text`) whose NULs the service removes."""

    def tolerates_nul(self, path: str) -> bool:
        """Whether a NUL at `path` is the handler's to remove rather than the edge's to refuse."""
        return any(re.fullmatch(pattern, path) for pattern in self.nul_tolerant)


def decode_json(
    data: bytes | str, *, rules: JsonRules, where: str = "body", source: str = "body"
) -> Any:
    """Decode JSON text and check every key and string in it.

    Args:
        data: The JSON text (a request body, a multipart field).
        rules: Depth bound and NUL exceptions.
        where: The field `data` came from, for messages (`body`, `metadata[0]`).
        source: Where the caller sent it (`body`).

    Returns:
        The decoded value (dicts, lists, strings, numbers, booleans, None).

    Raises:
        MalformedRequest: A body that is not JSON, not UTF-8, holds a lone surrogate, or nests
            too deep.
        ValidationFailed: A NUL character in a key or string; a field (not the body) that
            is not JSON: the request itself decoded, the value breaks its format.
    """
    malformed = where == "body"
    try:
        value = msgspec.json.decode(data)
    except RecursionError:
        message = f"JSON nested deeper than {rules.max_depth} levels"
        raise refuse_field(where, message, source=source, malformed=malformed) from None
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (invalid byte at offset {exc.start})"
        raise refuse_field(where, message, source=source, malformed=malformed) from None
    except msgspec.DecodeError as exc:
        message = f"not valid JSON ({exc})"
        raise refuse_field(where, message, source=source, malformed=malformed) from None
    check_json(value, rules=rules, root="" if malformed else where, source=source)
    return value


def check_json(value: Any, *, rules: JsonRules, root: str = "", source: str = "body") -> None:
    """Walk a decoded JSON value: nesting within `rules.max_depth`, no NUL in keys or strings.

    Iterative, so a deep value cannot exhaust the interpreter's stack while it is checked.

    Raises:
        MalformedRequest: Nested deeper than `rules.max_depth`.
        ValidationFailed: A NUL character in a key or string (outside `rules.nul_tolerant`).
    """
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if NUL in node and not rules.tolerates_nul(path):
                raise nul_refusal(path or "body", source=source)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth >= rules.max_depth:
            raise refuse_field(
                path or "body",
                f"JSON nested deeper than {rules.max_depth} levels",
                source=source,
                malformed=root == "",
            )
        items: Iterable[tuple[str | int, Any]]
        if isinstance(node, dict):
            for key in node:
                if NUL in key:
                    raise nul_refusal(child(path, key), source=source)
            items = node.items()
        else:
            items = enumerate(node)
        # Reversed, so the first bad field in document order is the one reported.
        stack.extend((item, child(path, key), depth + 1) for key, item in reversed(list(items)))
