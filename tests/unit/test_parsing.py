"""Uploaded files to text: format detection, document ids from file names, each parser."""

from __future__ import annotations

import codecs
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.problems import PayloadTooLarge, UnsupportedMediaType
from app.retrieval.parsing import (
    FileFormat,
    UnreadableFile,
    detect_format,
    document_id_from_filename,
    parse_file,
)
from tests.samples import CORRUPT_PDF, encrypt_pdf, make_pdf

DOCUMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # schemas.DocumentId


def parse(data: bytes, file_format: FileFormat, max_pdf_pages: int = 100) -> tuple[str, str | None]:
    parsed = parse_file(data, file_format=file_format, max_pdf_pages=max_pdf_pages)
    return parsed.text, parsed.title


@pytest.mark.parametrize(
    ("filename", "content_type", "expected"),
    [
        ("notes.TXT", "application/octet-stream", FileFormat.TEXT),
        ("readme.md", None, FileFormat.MARKDOWN),
        ("page.htm", "text/plain", FileFormat.HTML),  # the extension wins
        ("report.pdf", "", FileFormat.PDF),
        ("no-extension", "application/pdf", FileFormat.PDF),
        ("blob", "text/html; charset=utf-8", FileFormat.HTML),
    ],
)
def test_format_comes_from_extension_then_content_type(
    filename: str, content_type: str | None, expected: FileFormat
) -> None:
    assert detect_format(filename, content_type) is expected


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [("slides.pptx", "application/octet-stream"), ("photo.png", "image/png"), ("x", None)],
)
def test_unknown_formats_are_refused_not_guessed(filename: str, content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as refused:
        detect_format(filename, content_type)
    assert refused.value.status == 415
    assert refused.value.code == "unsupported_media_type"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("handbook.pdf", "handbook.pdf"),
        ("guides/setup.md", "guides:setup.md"),
        ("C:\\docs\\Q3 report (final).txt", "C-:docs:Q3-report-final-.txt"),
        ("../../etc/passwd.txt", "etc:passwd.txt"),
        ("_draft.md", "draft.md"),
        ("Ünïcode naïve.md", "n-code-na-ve.md"),
        ("///", ""),
    ],
)
def test_document_id_from_filename(filename: str, expected: str) -> None:
    assert document_id_from_filename(filename) == expected


def test_long_names_are_cut_but_stay_distinct() -> None:
    first = document_id_from_filename("a" * 300 + "1.md")
    second = document_id_from_filename("a" * 300 + "2.md")
    assert len(first) == len(second) == 128
    assert first != second


@given(st.text(max_size=300))
def test_derived_ids_are_always_valid_document_ids(filename: str) -> None:
    derived = document_id_from_filename(filename)
    assert derived == "" or DOCUMENT_ID.fullmatch(derived)


def test_html_keeps_text_and_headings_and_drops_code() -> None:
    html = b"""<!doctype html><html><head><title>Travel  policy</title>
    <style>p { color: red }</style><script>var secret = "not text";</script></head>
    <body><nav>Home</nav><h1>Travel</h1><p>Book <b>economy</b>
    for flights under six hours.</p><h2>Hotels</h2><ul><li>Up to 150 EUR</li><li>Breakfast
    included</li></ul><noscript>enable js</noscript></body></html>"""
    text, title = parse(html, FileFormat.HTML)
    assert title == "Travel policy"
    assert text == (
        "Home\n\n# Travel\n\nBook economy for flights under six hours.\n\n## Hotels\n\n"
        "Up to 150 EUR\n\nBreakfast included"
    )


def test_html_title_falls_back_to_the_first_h1() -> None:
    assert parse(b"<h1>Badges</h1><p>Wear it.</p>", FileFormat.HTML)[1] == "Badges"


def test_markdown_title_is_its_first_heading() -> None:
    text = "Intro line\n\n## Expenses ##\n\nKeep receipts.\n"
    assert parse(text.encode(), FileFormat.MARKDOWN) == (text, "Expenses")


def test_text_decodes_utf8_with_or_without_bom_and_utf16_with_bom() -> None:
    assert parse(codecs.BOM_UTF8 + "café".encode(), FileFormat.TEXT) == ("café", None)
    assert parse("café".encode(), FileFormat.TEXT) == ("café", None)
    assert parse("café".encode("utf-16"), FileFormat.TEXT) == ("café", None)


@pytest.mark.parametrize("data", ["café".encode("latin-1"), b"abc\x00def"])
def test_non_utf8_or_binary_text_is_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadableFile) as refused:
        parse(data, FileFormat.TEXT)
    assert (refused.value.status, refused.value.code) == (422, "unreadable_file")


def test_pdf_text_pages_and_title() -> None:
    pdf = make_pdf([["Remote work (hybrid)", "needs approval"], ["Page two"]], title="Remote")
    assert parse(pdf, FileFormat.PDF) == (
        "Remote work (hybrid)\nneeds approval\n\nPage two",
        "Remote",
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (CORRUPT_PDF, "corrupt or unreadable PDF"),
        (b"just text pretending", "not a PDF"),
        (encrypt_pdf(make_pdf([["secret plans"]]), "hunter2"), "encrypted PDF"),
    ],
)
def test_bad_pdfs_are_unreadable(data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableFile) as refused:
        parse(data, FileFormat.PDF)
    assert reason in refused.value.detail
    assert refused.value.code == "unreadable_file"


def test_pdf_page_limit() -> None:
    pdf = make_pdf([["one"], ["two"], ["three"]])
    with pytest.raises(PayloadTooLarge):
        parse(pdf, FileFormat.PDF, max_pdf_pages=2)
    assert parse(pdf, FileFormat.PDF, max_pdf_pages=3)[0] == "one\n\ntwo\n\nthree"
