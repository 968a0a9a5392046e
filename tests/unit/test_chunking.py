"""Chunking: sections, sizes, overlap, long paragraphs, and that no text is lost or reordered."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from app.retrieval.chunking import Chunk, chunk_text

_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


def _words(text: str) -> list[str]:
    return text.split()


def _paragraph(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def _document(seed: int) -> str:
    """A multi-section markdown document with paragraphs of varied length."""
    rng = random.Random(seed)
    parts = [_paragraph(rng, 2)]
    for n in range(4):
        parts.append(f"## Section {n}")
        parts.extend(_paragraph(rng, rng.randint(1, 6)) for _ in range(rng.randint(2, 6)))
    return "\n\n".join(parts)


def _heading_lengths(text: str) -> int:
    return max((len(ln) for ln in text.splitlines() if ln.startswith("#")), default=0)


# --- empty input ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\n"])
def test_empty_or_whitespace_text_gives_no_chunks(text: str) -> None:
    assert chunk_text(text, target_chars=200, overlap_chars=20) == []


# --- sections ------------------------------------------------------------------------------


def test_headings_start_new_chunks_and_set_section() -> None:
    text = (
        "Preamble before any heading.\n\n"
        "# Alpha\n\nAlpha body text.\n\n"
        "## Beta Part ##\n\nBeta body text.\n"
    )
    chunks = chunk_text(text, target_chars=1000, overlap_chars=100)

    assert [c.section for c in chunks] == ["", "Alpha", "Beta Part"]
    assert chunks[0].text == "Preamble before any heading."
    assert chunks[1].text.startswith("# Alpha")
    assert "Alpha body text." in chunks[1].text
    assert "Beta" not in chunks[1].text
    assert chunks[2].text.startswith("## Beta Part")
    assert "Alpha" not in chunks[2].text


def test_heading_only_section_produces_no_chunk() -> None:
    text = "# Empty\n\n# Full\n\nSome content here.\n\n# Trailing\n"
    chunks = chunk_text(text, target_chars=500, overlap_chars=50)

    assert [c.section for c in chunks] == ["Full"]
    assert "Empty" not in chunks[0].text
    assert "Trailing" not in chunks[0].text


def test_heading_alone_document_gives_no_chunks() -> None:
    assert chunk_text("## Just a title", target_chars=500, overlap_chars=50) == []


def test_no_chunk_is_only_a_heading_line() -> None:
    """A first paragraph too big to sit beside the heading still does not orphan the heading."""
    body = " ".join(_WORDS) + "."  # one sentence, longer than the target
    text = f"## Intro\n\n{body}"
    for overlap in (0, 20):
        chunks = chunk_text(text, target_chars=60, overlap_chars=overlap)
        assert chunks
        for chunk in chunks:
            assert chunk.text.strip() != "## Intro"
            assert chunk.section == "Intro"
        assert chunks[0].text.startswith("## Intro\n\n")


def test_indexes_are_consecutive_from_zero() -> None:
    chunks = chunk_text(_document(1), target_chars=150, overlap_chars=30)
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))


# --- size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "overlap"), [(100, 0), (150, 30), (300, 80), (120, 500)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunks_respect_target_plus_overlap(target: int, overlap: int, seed: int) -> None:
    """Pieces are at most `target`; a chunk adds at most the carried overlap (or heading) + 2."""
    text = _document(seed)
    chunks = chunk_text(text, target_chars=target, overlap_chars=overlap)
    carried = max(min(overlap, target // 2), _heading_lengths(text))
    assert chunks
    for chunk in chunks:
        assert len(chunk.text) <= target + 2 + carried, chunk


def test_without_overlap_short_paragraphs_are_packed_up_to_target() -> None:
    paragraphs = [f"Paragraph number {n} has a few words." for n in range(40)]
    longest = max(len(p) for p in paragraphs)
    chunks = chunk_text("\n\n".join(paragraphs), target_chars=200, overlap_chars=0)

    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk.text) <= 200
    for chunk in chunks[:-1]:
        # It was closed only because the next paragraph did not fit.
        assert len(chunk.text) > 200 - 2 - longest


# --- overlap -------------------------------------------------------------------------------


def _carried(previous: str, following: str) -> str:
    """The text `following` took from the end of `previous` (`following` = carried + blank line)."""
    for size in range(min(len(previous), len(following)), 0, -1):
        tail = previous[-size:]
        if following.startswith(tail + "\n\n"):
            return tail
    return ""


def test_overlap_carries_tail_of_previous_chunk_within_a_section() -> None:
    text = _document(7)
    overlap = 40
    chunks = chunk_text(text, target_chars=160, overlap_chars=overlap)
    pairs = [(a, b) for a, b in itertools.pairwise(chunks) if a.section == b.section]
    assert len(pairs) >= 3

    for a, b in pairs:
        carried = _carried(a.text, b.text)
        assert carried, (a, b)
        assert len(carried) <= overlap
        # The carried text starts on a word boundary of the previous chunk.
        assert carried == a.text or a.text[-len(carried) - 1] in " \n"


def test_overlap_does_not_cross_sections() -> None:
    chunks = chunk_text(_document(7), target_chars=160, overlap_chars=40)
    firsts = [b for a, b in itertools.pairwise(chunks) if a.section != b.section]
    assert len(firsts) == 4
    for chunk in firsts:
        assert chunk.text.startswith(f"## {chunk.section}")


def test_overlap_is_capped_at_half_the_target() -> None:
    chunks = chunk_text(_document(3), target_chars=120, overlap_chars=10_000)
    pairs = [(a, b) for a, b in itertools.pairwise(chunks) if a.section == b.section]
    assert pairs
    for a, b in pairs:
        carried = _carried(a.text, b.text)
        assert 0 < len(carried) <= 60


def test_zero_overlap_carries_nothing() -> None:
    paragraphs = [f"Unique paragraph {n} says something." for n in range(20)]
    chunks = chunk_text("\n\n".join(paragraphs), target_chars=100, overlap_chars=0)
    assert len(chunks) > 2
    for chunk in chunks:
        assert chunk.text.startswith("Unique paragraph")
    all_text = "\n\n".join(c.text for c in chunks)
    for p in paragraphs:
        assert all_text.count(p) == 1


# --- long paragraphs -----------------------------------------------------------------------


def test_long_paragraph_without_blank_lines_splits_at_sentence_boundaries() -> None:
    sentences = [f"Sentence {n} talks about item {n} in detail." for n in range(30)]
    # One paragraph: the sentences are on separate lines but no blank line separates them.
    text = "\n".join(sentences)
    chunks = chunk_text(text, target_chars=150, overlap_chars=0)

    assert len(chunks) > 3
    for chunk in chunks:
        assert len(chunk.text) <= 150
        assert chunk.text.endswith(".")
        assert chunk.text.startswith("Sentence ")


def test_sentence_longer_than_target_splits_at_word_boundaries() -> None:
    words = [f"{_WORDS[n % len(_WORDS)]}{n}" for n in range(80)]
    text = " ".join(words)  # no sentence punctuation at all
    chunks = chunk_text(text, target_chars=100, overlap_chars=0)

    assert len(chunks) > 3
    known = set(words)
    for chunk in chunks:
        assert len(chunk.text) <= 100
        assert set(_words(chunk.text)) <= known  # no word was cut in half
    assert [w for c in chunks for w in _words(c.text)] == words


# --- no text lost --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_word_of_the_input_appears_in_some_chunk(seed: int) -> None:
    text = _document(seed)
    chunks = chunk_text(text, target_chars=130, overlap_chars=25)
    chunk_words = {w for c in chunks for w in _words(c.text)}
    assert set(_words(text)) <= chunk_words


@pytest.mark.parametrize(("target", "seed"), [(100, 1), (150, 2), (250, 3), (80, 4)])
def test_without_overlap_chunks_reproduce_the_input_words_in_order(target: int, seed: int) -> None:
    text = _document(seed)
    chunks = chunk_text(text, target_chars=target, overlap_chars=0)
    assert [w for c in chunks for w in _words(c.text)] == _words(text)


def test_short_sentence_before_an_overlong_one_keeps_its_place() -> None:
    long_sentence = " ".join(f"word{n}" for n in range(60)) + "."
    text = f"Intro first. {long_sentence} Final words."
    chunks = chunk_text(text, target_chars=100, overlap_chars=0)

    assert chunks[0].text.startswith("Intro first.")
    assert [w for c in chunks for w in _words(c.text)] == _words(text)


def test_chunk_is_a_frozen_value() -> None:
    chunk = chunk_text("Some text here.", target_chars=100, overlap_chars=0)[0]
    assert chunk == Chunk(index=0, text="Some text here.", section="")
    with pytest.raises(AttributeError):
        chunk.text = "changed"  # type: ignore[misc]


def test_windows_line_endings_and_indentation_are_handled() -> None:
    text = "  # Title  \r\n\r\n   First line\r\n   second line.\r\n"
    chunks = chunk_text(text, target_chars=200, overlap_chars=0)
    assert [(c.section, c.text) for c in chunks] == [
        ("Title", "# Title\n\nFirst line second line.")
    ]
    assert not re.search(r"\r", chunks[0].text)
