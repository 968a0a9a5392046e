"""Heading- and paragraph-aware chunking with overlap.

A heading always starts a new chunk, so a chunk never straddles two sections; paragraphs are
packed up to the target size; a paragraph larger than the target is split at sentence and then
word boundaries. Each chunk after the first in a section starts with the tail of the previous
one (the overlap), so a fact split across a boundary is still retrievable whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document, with the heading it sits under."""

    index: int
    text: str
    section: str


def _split_long(paragraph: str, target: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        if current and len(sentence) > target:
            # Close what came before, so the long sentence's pieces keep their place after it.
            pieces.append(current)
            current = ""
        while len(sentence) > target:
            cut = sentence.rfind(" ", 0, target)
            cut = cut if cut > target // 2 else target
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > target:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def _tail(text: str, size: int) -> str:
    if size <= 0 or len(text) <= size:
        return "" if size <= 0 else text
    start = text.find(" ", len(text) - size)
    return text[start + 1 :] if start != -1 else text[-size:]


def chunk_text(text: str, *, target_chars: int, overlap_chars: int) -> list[Chunk]:
    """Split `text` into chunks of about `target_chars`, overlapping by up to `overlap_chars`."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if paragraph:
            sections[-1][1].append(" ".join(paragraph))
            paragraph.clear()

    for raw_line in text.splitlines():
        line = raw_line.strip()
        heading = _HEADING.match(line)
        if heading:
            end_paragraph()
            sections.append((heading.group(2), [line]))
        elif not line:
            end_paragraph()
        else:
            paragraph.append(line)
    end_paragraph()

    chunks: list[Chunk] = []
    overlap = min(overlap_chars, target_chars // 2)
    for section, paragraphs in sections:
        current = ""
        pieces = [p for para in paragraphs for p in _split_long(para, target_chars)]
        for piece in pieces:
            # A heading stays with the text after it rather than becoming a chunk of its own.
            fits = len(current) + 2 + len(piece) <= target_chars or bool(_HEADING.match(current))
            if current and not fits:
                chunks.append(Chunk(len(chunks), current, section))
                carried = _tail(current, overlap)
                current = f"{carried}\n\n{piece}" if carried else piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
        # A section that is only its heading line carries nothing to retrieve.
        if current.strip() and not _HEADING.match(current.strip()):
            chunks.append(Chunk(len(chunks), current, section))
    return chunks
