"""Multipart bodies at the edge: part names, file names and text fields checked as they stream.

The handler parses the upload itself (`app.retrieval.uploads`, with the upload limits); this
inspector runs a second, header-only parse of the same bytes inside `receive`, so a bad part
is refused before the handler sees the chunk that carries it. File data is never buffered
here: only text fields (bounded) are, to look for NUL characters.
"""

from __future__ import annotations

from typing import Any

from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from app.edge.errors import refuse_field
from app.edge.text import NUL, label, nul_refusal

MAX_FILENAME_CHARS = 255
"""Longest file name accepted (the common file-system limit); ids derive from it."""
MAX_FIELD_NAME_CHARS = 64
MAX_HEADER_BYTES = 4224
"""The `multipart` parser's own default, which the handler's parser uses too: the edge must
refuse an oversize part header first, with a message that says what it is."""
_MAX_INSPECTED_FIELD_BYTES = 64 * 1024


class MultipartInspector:
    """A `receive` callable that checks each part's headers and text before passing it on."""

    def __init__(self, receive: Any, *, boundary: str) -> None:
        self._receive = receive
        self._parser: PushMultipartParser | None = None
        if boundary:
            try:
                self._parser = PushMultipartParser(
                    boundary.encode("latin-1"), max_header_size=MAX_HEADER_BYTES
                )
            except (ValueError, UnicodeEncodeError):
                # The handler refuses a bad boundary with its own message.
                self._parser = None
        self._files = 0
        self._fields: dict[str, int] = {}
        self._segment: MultipartSegment | None = None
        self._key = ""
        self._text = bytearray()

    async def __call__(self) -> Any:
        """The next message, once its parts have been checked.

        Raises:
            MalformedRequest: Part headers that are not UTF-8.
            ValidationFailed: A NUL character, an overlong file or field name or part header.
        """
        message = await self._receive()
        if self._parser is not None and message["type"] == "http.request":
            self._inspect(message.get("body", b""))
        return message

    def _inspect(self, chunk: bytes) -> None:
        assert self._parser is not None  # noqa: S101 - checked by the caller
        try:
            for event in self._parser.parse(chunk):
                if isinstance(event, MultipartSegment):
                    self._begin(event)
                elif event:
                    if self._buffering():
                        self._text.extend(event)
                else:
                    self._end()
        except ParserLimitReached:
            # The only unbounded things a client writes in part headers are names and file
            # names, and a file name is by far the likelier: name it.
            raise refuse_field(
                f"{self._next_part_key()}.filename",
                f"part headers are over {MAX_HEADER_BYTES} bytes (file names are at most"
                f" {MAX_FILENAME_CHARS} characters)",
                source="body",
            ) from None
        except ParserError as exc:
            if isinstance(exc.__cause__ or (exc.args[1:2] or [None])[0], UnicodeDecodeError):
                raise refuse_field(
                    self._next_part_key(),
                    "part headers are not UTF-8 text",
                    source="body",
                    malformed=True,
                ) from None
            # Anything else malformed is the handler's to refuse, with its own message.
            self._parser = None

    def _buffering(self) -> bool:
        in_text_field = self._segment is not None and self._segment.filename is None
        return in_text_field and len(self._text) < _MAX_INSPECTED_FIELD_BYTES

    def _next_part_key(self) -> str:
        return f"files[{self._files}]"

    def _begin(self, segment: MultipartSegment) -> None:
        self._segment, self._text = segment, bytearray()
        name = segment.name or ""
        if segment.filename is not None:
            self._key = f"files[{self._files}]"
            self._files += 1
            if NUL in name:
                raise nul_refusal(f"{self._key}.name", source="body")
            if NUL in segment.filename:
                raise nul_refusal(f"{self._key}.filename", source="body")
            if len(segment.filename) > MAX_FILENAME_CHARS:
                raise refuse_field(
                    f"{self._key}.filename",
                    f"at most {MAX_FILENAME_CHARS} characters",
                    source="body",
                )
            return
        index = self._fields.get(name, 0)
        self._fields[name] = index + 1
        self._key = f"{label(name)}[{index}]"
        if NUL in name:
            raise nul_refusal(self._key, source="body")
        if len(name) > MAX_FIELD_NAME_CHARS:
            message = f"field names are at most {MAX_FIELD_NAME_CHARS} characters"
            raise refuse_field(self._key, message, source="body")

    def _end(self) -> None:
        if self._segment is not None and self._segment.filename is None:
            if b"\x00" in self._text:
                raise nul_refusal(self._key, source="body")
            try:
                # Cut at the inspection bound, a character may be split: ignore the tail.
                self._text.decode("utf-8", errors="strict" if self._complete_text() else "ignore")
            except UnicodeDecodeError:
                raise refuse_field(
                    self._key, "not UTF-8 text", source="body", malformed=True
                ) from None
        self._segment = None

    def _complete_text(self) -> bool:
        return len(self._text) < _MAX_INSPECTED_FIELD_BYTES
