"""Uploaded files to text: txt, Markdown, HTML (selectolax) and PDF (pypdf).

The format comes from the file name's extension, else from the part's content type; anything
else is refused (415), never guessed. HTML headings become Markdown headings, so the chunker's
section logic works the same for every format. Text files must be UTF-8 (a UTF-8 or UTF-16 byte
order mark is honoured).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

from pypdf import PdfReader
from selectolax.lexbor import LexborHTMLParser

from app.problems import ApiError, PayloadTooLarge, UnsupportedMediaType


class FileFormat(StrEnum):
    """A format Bulkhead can turn into text."""

    TEXT = "text"
    MARKDOWN = "markdown"
    HTML = "html"
    PDF = "pdf"


FORMAT_BY_EXTENSION = {
    ".txt": FileFormat.TEXT,
    ".text": FileFormat.TEXT,
    ".md": FileFormat.MARKDOWN,
    ".markdown": FileFormat.MARKDOWN,
    ".html": FileFormat.HTML,
    ".htm": FileFormat.HTML,
    ".pdf": FileFormat.PDF,
}
FORMAT_BY_CONTENT_TYPE = {
    "text/plain": FileFormat.TEXT,
    "text/markdown": FileFormat.MARKDOWN,
    "text/x-markdown": FileFormat.MARKDOWN,
    "text/html": FileFormat.HTML,
    "application/xhtml+xml": FileFormat.HTML,
    "application/pdf": FileFormat.PDF,
}

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")
_MAX_ID = 128
# Parsed but never shown: code, styling and embedded objects carry no document text.
_HTML_DROP = "script, style, noscript, template, svg, math, iframe, object, embed, canvas, head"
_HTML_HEADINGS = "h1, h2, h3, h4, h5, h6"
_HTML_BLOCKS = (
    "p, div, br, hr, li, dt, dd, tr, td, th, pre, blockquote, section, article, aside, header,"
    " footer, nav, main, figure, figcaption, table, ul, ol, dl, form, fieldset, address, details,"
    " summary, caption"
)
# Marks block boundaries while the DOM is flattened; real source newlines inside a block are
# insignificant in HTML and collapse with the other whitespace.
_BLOCK = "\u2029"
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


class UnreadableFile(ApiError):
    """A file of a supported type whose content cannot be read (corrupt, encrypted, not UTF-8)."""

    status, code, title = 422, "unreadable_file", "Unreadable file"


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """The text of an uploaded file, and a title found in it (if any)."""

    text: str
    title: str | None


def detect_format(filename: str, content_type: str | None) -> FileFormat:
    """The format of an upload: by extension first, then by declared content type.

    Raises:
        UnsupportedMediaType: Neither names a format Bulkhead parses.
    """
    by_extension = FORMAT_BY_EXTENSION.get(PurePosixPath(filename).suffix.lower())
    if by_extension is not None:
        return by_extension
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    by_type = FORMAT_BY_CONTENT_TYPE.get(media_type)
    if by_type is None:
        supported = ", ".join(sorted(FORMAT_BY_EXTENSION))
        raise UnsupportedMediaType(
            f"{filename!r} ({media_type or 'no content type'}): supported files are {supported}"
        )
    return by_type


def document_id_from_filename(filename: str) -> str:
    """The document id an uploaded file gets when the request names none.

    The file name as sent (directories included, a backslash read as `/`), with `/` turned into `:`
    and every run of other characters outside `[A-Za-z0-9._-]` into `-`; leading characters
    that are not letters or digits are dropped. A result over 128 characters keeps its first
    119 and appends `-` and 8 hex digits of the whole name's SHA-256, so ids stay distinct.
    Empty when nothing usable is left.
    """
    parts = [p for p in filename.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    cleaned = ":".join(_ID_UNSAFE.sub("-", part.replace(":", "-")) for part in parts)
    cleaned = cleaned.lstrip("._:-")
    if len(cleaned) > _MAX_ID:
        digest = hashlib.sha256(filename.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: _MAX_ID - 9]}-{digest}"
    return cleaned


def parse_file(data: bytes, *, file_format: FileFormat, max_pdf_pages: int) -> ParsedFile:
    """Extract the text (and a title, when the file has one) of an uploaded file.

    CPU-bound for PDFs: call it off the event loop.

    Raises:
        UnreadableFile: Corrupt or encrypted PDF, text that is not UTF-8, binary content.
        PayloadTooLarge: A PDF with more than `max_pdf_pages` pages.
    """
    if file_format is FileFormat.PDF:
        return _pdf(data, max_pages=max_pdf_pages)
    text = _decode(data)
    if file_format is FileFormat.HTML:
        return _html(text)
    if file_format is FileFormat.MARKDOWN:
        heading = _MD_HEADING.search(text)
        return ParsedFile(text, heading.group(1).strip() if heading else None)
    return ParsedFile(text, None)


def _decode(data: bytes) -> str:
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"not UTF-8 text (invalid byte at offset {exc.start}); convert the file to UTF-8"
        ) from exc
    if "\x00" in text:
        raise UnreadableFile("binary content (NUL bytes) in a text file")
    return text


def _html(text: str) -> ParsedFile:
    tree = LexborHTMLParser(text)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node else ""
    for node in tree.css(_HTML_DROP):
        node.decompose()
    for node in tree.css(_HTML_HEADINGS):
        heading = " ".join(node.text().split())
        level = int((node.tag or "h1")[1])
        if not title and level == 1:
            title = heading
        node.replace_with(f"{_BLOCK}{'#' * level} {heading}{_BLOCK}" if heading else _BLOCK)
    for node in tree.css(_HTML_BLOCKS):
        node.insert_before(_BLOCK)
        node.insert_after(_BLOCK)
    root = tree.body or tree.root
    flat = root.text() if root is not None else ""
    blocks = (" ".join(block.split()) for block in flat.split(_BLOCK))
    return ParsedFile("\n\n".join(b for b in blocks if b), title or None)


def _pdf(data: bytes, *, max_pages: int) -> ParsedFile:
    if b"%PDF-" not in data[:1024]:
        raise UnreadableFile("not a PDF (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFile("encrypted PDF: remove the password before uploading")
        if len(reader.pages) > max_pages:
            raise PayloadTooLarge(f"PDF has {len(reader.pages)} pages; at most {max_pages}")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except ApiError:
        raise
    except Exception as exc:
        # pypdf raises many types on damaged input (PdfReadError, ValueError, KeyError...):
        # all mean the same to the caller. The parser's message names no secret.
        raise UnreadableFile(f"corrupt or unreadable PDF ({type(exc).__name__})") from exc
    return ParsedFile("\n\n".join(p.strip() for p in pages if p.strip()), title or None)
