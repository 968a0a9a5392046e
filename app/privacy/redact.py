"""Redaction of credentials, email addresses and card numbers (manifest `privacy.redact`).

Applied to everything a provider is sent (question, history, retrieved context) by the
provider chain, and to document text at ingestion, so a credential pasted into a document
never reaches the vector store. Credential shapes are the ones log scrubbing uses
(`app.secrets.patterns`). Spans get counts per kind (`bulkhead.redaction.<kind>`), never
the redacted content.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, Final, TypeVar

from opentelemetry import trace

from app.secrets.patterns import LABELLED_CREDENTIAL, may_hold_labelled_credential, shapes_for


class RedactionKind(StrEnum):
    """What a tenant may ask to have redacted (manifest `privacy.redact`)."""

    CREDENTIALS = "credentials"
    EMAIL = "email"
    CREDIT_CARD = "credit_card"


_MARKERS: Final = {kind: f"[REDACTED:{kind.value}]" for kind in RedactionKind}
_EMAIL: Final = re.compile(
    r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"
)
# 13 to 19 digits, optionally grouped by single spaces or dashes; Luhn decides.
# No look-behind (it would cost every position a check): `_cards` checks the preceding
# character itself, so a match inside a longer digit run is still refused.
_CARD: Final = re.compile(r"\d(?:[ \-]?\d){12,18}(?![\d-])")
# Generic secrets: a long unbroken run of base64/base64url characters with high entropy.
_MIN_SECRET_CHARS: Final = 32
# Greedy and unanchored: the leftmost match of a run is the whole run, so no look-arounds.
_CANDIDATE: Final = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")
_MIN_CARD_DIGITS: Final = 13
_NO_DIGITS: Final = str.maketrans("", "", "0123456789")
# Random base64 of 32+ characters measures ~4.5-5 bits per character; English compounds,
# paths and hex digests (at most 4 bits) stay below 4.3, so they are left alone.
_MIN_ENTROPY_BITS: Final = 4.3
# Identifiers, settings and filterable metadata, not content: never rewritten even if they
# look random (a redacted document id or metadata value would break lookups and filters).
_IDENTIFIER_FIELDS: Final = frozenset(
    {"id", "model", "document_id", "chunk_id", "marker", "role", "metadata", "acl_groups"}
    | {"content_sha256"}
)

T = TypeVar("T")


def marker(kind: RedactionKind) -> str:
    """The text that replaces a redacted span of `kind`."""
    return _MARKERS[kind]


def parse_kinds(values: Iterable[str]) -> frozenset[RedactionKind]:
    """The redaction kinds named in a manifest (the schema allows only known names)."""
    return frozenset(RedactionKind(value) for value in values)


def redact_text(
    text: str, kinds: frozenset[RedactionKind], counts: Counter[str] | None = None
) -> str:
    """`text` with every span of the given kinds replaced by `[REDACTED:<kind>]`.

    Args:
        text: Any text about to leave for a provider or be indexed.
        kinds: What to redact.
        counts: Incremented per kind by the number of spans replaced.

    Returns:
        The redacted text (the same object when nothing matched).
    """
    if not kinds or not text:
        return text
    tally = counts if counts is not None else Counter()
    if RedactionKind.CREDENTIALS in kinds:
        text = _credentials(text, tally)
    if RedactionKind.EMAIL in kinds and "@" in text:
        text = _sub(_EMAIL, text, RedactionKind.EMAIL, tally)
    if RedactionKind.CREDIT_CARD in kinds:
        text = _cards(text, tally)
    return text


class RedactionMemo:
    """Redactions already computed, for texts that recur: retrieved passages.

    A bounded LRU of (partition, kinds, text) -> (redacted text, counts per kind), applied
    only to the strings inside instances of `types` (for chat: `ContextChunk`, document text
    that every question about the same topic retrieves again). Users' own words (questions,
    history) are never kept. Callers partition by tenant, so whether a text is remembered (a
    faster answer) never depends on another tenant's documents.
    """

    def __init__(self, types: tuple[type, ...], size: int = 4096) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.types = types
        self._size = size
        self._items: OrderedDict[
            tuple[str, frozenset[RedactionKind], str], tuple[str, tuple[tuple[str, int], ...]]
        ] = OrderedDict()

    def redact(
        self, partition: str, text: str, kinds: frozenset[RedactionKind], counts: Counter[str]
    ) -> str:
        """`redact_text(text, kinds, counts)`, remembered per `partition`."""
        if not text:
            return text
        key = (partition, kinds, text)
        known = self._items.get(key)
        if known is not None:
            self._items.move_to_end(key)
            redacted, found = known
        else:
            tally: Counter[str] = Counter()
            redacted = redact_text(text, kinds, tally)
            found = tuple(tally.items())
            self._items[key] = (redacted, found)
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        for kind, count in found:
            counts[kind] += count
        return redacted

    def __len__(self) -> int:
        return len(self._items)


def redact_fields(
    value: T,
    kinds: frozenset[RedactionKind],
    *,
    memo: RedactionMemo | None = None,
    partition: str = "",
) -> T:
    """A copy of `value` (dataclass, str, dict, tuple, list) with its text redacted.

    Walks dataclass fields recursively, so fields added to a request later (history turns,
    tool messages) are covered without touching this function. Identifier fields (`model`,
    `document_id`, `chunk_id`, a message's `role`) are kept as they are. Counts per kind go
    on the current span as `bulkhead.redaction.<kind>` and `bulkhead.redaction.count`. With a
    `memo`, the texts of its `types` seen before under the same `partition` (the tenant) are
    not redacted again.
    """
    if not kinds:
        return value
    counts: Counter[str] = Counter()

    def plain(text: str) -> str:
        return redact_text(text, kinds, counts)

    def remembered(text: str) -> str:
        return plain(text) if memo is None else memo.redact(partition, text, kinds, counts)

    redacted: T = _walk(value, plain, () if memo is None else memo.types, remembered)
    span = trace.get_current_span()
    span.set_attribute("bulkhead.redaction.count", sum(counts.values()))
    for kind in kinds:
        span.set_attribute(f"bulkhead.redaction.{kind.value}", counts[kind.value])
    return redacted


# Per dataclass type: the names of its fields that hold content (identifiers left out).
_CONTENT_FIELDS: dict[type, tuple[str, ...]] = {}


def _content_fields(kind: type) -> tuple[str, ...]:
    names = _CONTENT_FIELDS.get(kind)
    if names is None:
        names = tuple(
            field.name for field in dataclasses.fields(kind) if field.name not in _IDENTIFIER_FIELDS
        )
        _CONTENT_FIELDS[kind] = names
    return names


def _walk(
    value: Any,
    text: Callable[[str], str],
    remembered_types: tuple[type, ...],
    remembered: Callable[[str], str],
) -> Any:
    """`value` rebuilt with its strings passed through `text`, identifiers kept as they are.

    Inside instances of `remembered_types`, strings go through `remembered` instead.
    """
    if isinstance(value, str):
        return text(value)
    if isinstance(value, tuple | list):
        return type(value)(_walk(item, text, remembered_types, remembered) for item in value)
    if isinstance(value, dict):
        return {
            k: v if k in _IDENTIFIER_FIELDS else _walk(v, text, remembered_types, remembered)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, remembered_types):
            text = remembered
        changes = {
            name: _walk(getattr(value, name), text, remembered_types, remembered)
            for name in _content_fields(type(value))
        }
        return dataclasses.replace(value, **changes)
    return value


def _sub(pattern: re.Pattern[str], text: str, kind: RedactionKind, counts: Counter[str]) -> str:
    replacement = marker(kind)

    def replace(_: re.Match[str]) -> str:
        counts[kind.value] += 1
        return replacement

    return pattern.sub(replace, text)


def _credentials(text: str, counts: Counter[str]) -> str:
    shapes = shapes_for(text)
    if shapes is not None:
        text = _sub(shapes, text, RedactionKind.CREDENTIALS, counts)
    replacement = marker(RedactionKind.CREDENTIALS)
    if may_hold_labelled_credential(text):

        def keep_label(match: re.Match[str]) -> str:
            counts[RedactionKind.CREDENTIALS.value] += 1
            return (match[1] or match[2]) + replacement

        text = LABELLED_CREDENTIAL.sub(keep_label, text)

    # Cheap necessary condition first: a 32-character run sits inside a 32+ character word.
    if max(map(len, text.split()), default=0) < _MIN_SECRET_CHARS:
        return text

    def generic(match: re.Match[str]) -> str:
        candidate = match[0]
        if _looks_random(candidate):
            counts[RedactionKind.CREDENTIALS.value] += 1
            return replacement
        return candidate

    return _CANDIDATE.sub(generic, text)


def _looks_random(candidate: str) -> bool:
    if not (any(c.isdigit() for c in candidate) and any(c.isalpha() for c in candidate)):
        return False
    length = len(candidate)
    entropy = -sum((n / length) * math.log2(n / length) for n in Counter(candidate).values())
    return entropy >= _MIN_ENTROPY_BITS


def _cards(text: str, counts: Counter[str]) -> str:
    # Cheap necessary condition first (C-speed): a card number needs 13 digits.
    if len(text) - len(text.translate(_NO_DIGITS)) < _MIN_CARD_DIGITS:
        return text
    replacement = marker(RedactionKind.CREDIT_CARD)

    def card(match: re.Match[str]) -> str:
        start = match.start()
        if start and (text[start - 1].isdigit() or text[start - 1] == "-"):
            return match[0]
        digits = re.sub(r"[ \-]", "", match[0])
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            counts[RedactionKind.CREDIT_CARD.value] += 1
            return replacement
        return match[0]

    return _CARD.sub(card, text)


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (card numbers do)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
