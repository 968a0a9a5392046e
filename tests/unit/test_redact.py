"""Redaction of credentials, email addresses and card numbers (manifest `privacy.redact`)."""

from __future__ import annotations

from collections import Counter

import pytest

from app.llm.provider import CompletionRequest, ContextChunk
from app.privacy.redact import RedactionKind, luhn_valid, parse_kinds, redact_fields, redact_text
from app.secrets.patterns import CREDENTIAL_SHAPES, shapes_for

ALL = parse_kinds(["credentials", "email", "credit_card"])
CRED = "[REDACTED:credentials]"

CREDENTIALS = [
    "sk-proj-Abcdefghijklmnop1234567890",
    "sk-ant-api03-Zyxwvutsrqponmlk0987654321",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY9q",  # generic: 41 random-looking chars
]


@pytest.mark.parametrize("secret", CREDENTIALS)
def test_credential_shapes_are_redacted(secret: str) -> None:
    counts: Counter[str] = Counter()
    text = redact_text(f"please use {secret} for the call", ALL, counts)
    assert secret not in text
    assert CRED in text
    assert counts == Counter({"credentials": 1})


def test_bearer_token_keeps_its_label() -> None:
    text = redact_text("curl -H 'Authorization: Bearer abc.def.ghi123456'", ALL)
    assert text == f"curl -H 'Authorization: Bearer {CRED}'"


def test_email_redacted_only_when_asked() -> None:
    text = "write to jane.doe+hr@mail.example.co.uk today"
    assert redact_text(text, ALL) == "write to [REDACTED:email] today"
    assert redact_text(text, parse_kinds(["credentials"])) == text


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"])
def test_luhn_valid_cards_are_redacted(card: str) -> None:
    assert redact_text(f"card {card} exp 12/30", ALL) == "card [REDACTED:credit_card] exp 12/30"


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 shipped",  # one digit off: fails Luhn
        "tracking 1234567890123456",  # 16 digits, not Luhn-valid
        "call +1 555 123 4567",  # too short
        "ISBN 978-3-16-148410-0",
    ],
)
def test_numbers_failing_luhn_are_kept(text: str) -> None:
    assert redact_text(text, ALL) == text


@pytest.mark.parametrize(
    "text",
    [
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # hex
        "InternationalizationConfigurationManager2 is a class name",
        "see /usr/share/doc/python3/changelog.Debian.gz",
    ],
)
def test_ordinary_long_words_and_digests_are_kept(text: str) -> None:
    assert redact_text(text, ALL) == text


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_request_fields_redacted_and_identifiers_kept() -> None:
    request = CompletionRequest(
        question="my key is sk-proj-Abcdefghijklmnop1234567890, mail me at a@b.example",
        context=(
            ContextChunk(
                marker=1,
                document_id="doc-1",
                chunk_id="3f2b8c1e-9d7a-4b6c-8e0f-1a2b3c4d5e6f",
                title="Card for bob@corp.example",
                text="the card is 4111 1111 1111 1111",
                score=0.5,
            ),
        ),
        model="gpt-4o-mini",
    )
    redacted = redact_fields(request, ALL)
    assert redacted.question == f"my key is {CRED}, mail me at [REDACTED:email]"
    chunk = redacted.context[0]
    assert chunk.title == "Card for [REDACTED:email]"
    assert chunk.text == "the card is [REDACTED:credit_card]"
    assert (chunk.document_id, chunk.chunk_id, chunk.marker) == (
        "doc-1",
        "3f2b8c1e-9d7a-4b6c-8e0f-1a2b3c4d5e6f",
        1,
    )
    assert redacted.model == "gpt-4o-mini"


def test_no_kinds_changes_nothing() -> None:
    request = CompletionRequest(
        question="sk-proj-Abcdefghijklmnop1234567890", context=(), model="m"
    )
    assert redact_fields(request, frozenset()) is request
    assert RedactionKind("email") is RedactionKind.EMAIL


@pytest.mark.parametrize(
    "text",
    [
        *CREDENTIALS,
        "vault s.AbCdEfGhIjKlMnOpQrStUvWx12 and hvs.CAESIJ0123456789abcdefghij",
        "bk_0123456789abcdefghij ghp_0123456789abcdefghijklmnopqrstuvwxyz xoxb-1234567890-abc",
        "Hotel stays are reimbursed up to 180 euros per night. Days off: 25 days.",
        "",
    ],
)
def test_hinted_shapes_match_exactly_what_the_full_pattern_matches(text: str) -> None:
    hinted = shapes_for(text)
    assert (hinted.findall(text) if hinted else []) == CREDENTIAL_SHAPES.findall(text)
