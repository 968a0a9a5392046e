"""Scrubbing: keep registered secret values and credential-shaped strings out of every text.

`scrub` is applied to log records (`ScrubbingFilter`, or globally by `install_scrubbing`),
to problem details before they are returned, and by the provider layer to SDK exception
messages before they are logged, traced or returned (OpenAI's 401 echoes the key it got).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from app.secrets.patterns import (
    CREDENTIAL_SHAPES,
    LABELLED_CREDENTIAL,
    may_hold_labelled_credential,
)

if TYPE_CHECKING:
    from app.secrets.values import SecretValue

REDACTED: Final = "[REDACTED]"

# Shorter values would scrub ordinary words; such values are not credentials worth the name.
_MIN_REGISTERED_CHARS: Final = 6
# Each registered value costs a substring search per scrubbed text (~0.1 us); values in use
# are re-registered on every fetch, so the oldest evicted are ones no longer fetched.
_MAX_REGISTERED: Final = 2_000

_lock = threading.Lock()
_registered: OrderedDict[str, None] = OrderedDict()
_registered_snapshot: tuple[str, ...] = ()


def register_secret(value: SecretValue) -> None:
    """Remember a fetched value so `scrub` removes it wherever it shows up.

    Called by `SecretCache` on every value it fetches. The 2,000 most recently fetched
    values are kept.
    """
    global _registered_snapshot
    text = value.reveal()
    if len(text) < _MIN_REGISTERED_CHARS:
        return
    with _lock:
        if text in _registered:
            _registered.move_to_end(text)
            return
        _registered[text] = None
        while len(_registered) > _MAX_REGISTERED:
            _registered.popitem(last=False)
        # Longest first, so a value containing another is removed whole.
        _registered_snapshot = tuple(sorted(_registered, key=len, reverse=True))


def forget_registered_secrets() -> None:
    """Drop every registered value (tests)."""
    global _registered_snapshot
    with _lock:
        _registered.clear()
        _registered_snapshot = ()


def scrub(text: str) -> str:
    """`text` with registered secret values and credential-shaped strings replaced.

    Args:
        text: Any text about to be logged, traced, stored or returned.

    Returns:
        The text with each match replaced by `[REDACTED]`.
    """
    for value in _registered_snapshot:
        if value in text:
            text = text.replace(value, REDACTED)
    text = CREDENTIAL_SHAPES.sub(REDACTED, text)
    if may_hold_labelled_credential(text):
        text = LABELLED_CREDENTIAL.sub(_keep_label, text)
    return text


def _keep_label(match: re.Match[str]) -> str:
    return (match[1] or match[2]) + REDACTED


def scrub_exception(exc: BaseException) -> str:
    """A scrubbed one-line description of `exc` (type and message), safe to log or return."""
    return scrub(f"{type(exc).__name__}: {exc}")


class ScrubbingFilter(logging.Filter):
    """Scrubs a record's message and exception text in place; never drops a record.

    Attach it to handlers (a filter on a logger does not see records propagated from its
    children), or call `install_scrubbing` to scrub every record at creation.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub `record`; always True."""
        _scrub_record(record)
        return True


def _scrub_record(record: logging.LogRecord) -> None:
    if getattr(record, "_bulkhead_scrubbed", False):
        return
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = f"{record.msg!s} {record.args!r}"
    record.msg, record.args = scrub(message), None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    record._bulkhead_scrubbed = True


_installed = False


def install_scrubbing() -> None:
    """Scrub every log record the process creates, whichever handler later emits it. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
