"""Redaction of credentials, email addresses and card numbers (manifest `privacy.redact`)."""

from __future__ import annotations

from collections import Counter

import pytest

from app.llm.provider import CompletionRequest, ContextChunk, HistoryTurn
from app.privacy.redact import (
    RedactionKind,
    RedactionMemo,
    luhn_valid,
    parse_kinds,
    redact_fields,
    redact_text,
)
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


def _chunk(marker: int, text: str) -> ContextChunk:
    return ContextChunk(marker, f"doc-{marker}", f"doc-{marker}:0", "", text, 0.5)


def test_memo_gives_the_same_redaction_and_counts_as_none() -> None:
    memo = RedactionMemo((ContextChunk,))
    passage = f"ask bob@corp.example for {CREDENTIALS[0]}, card 4111 1111 1111 1111"
    for _ in range(3):  # first a miss, then hits: same text and same counts each time
        plain: Counter[str] = Counter()
        remembered: Counter[str] = Counter()
        expected = redact_text(passage, ALL, plain)
        assert memo.redact("acme", passage, ALL, remembered) == expected
        assert remembered == plain == Counter(credentials=1, email=1, credit_card=1)
    request = CompletionRequest(
        question=f"is {CREDENTIALS[1]} mine?",
        context=(_chunk(1, passage), _chunk(2, "nothing to hide here")),
        model="m",
        history=(HistoryTurn("user", "my mail is carol@corp.example"),),
    )
    assert redact_fields(request, ALL, memo=memo, partition="acme") == redact_fields(request, ALL)


def test_memo_keeps_passages_only_per_tenant_and_kinds_and_is_bounded() -> None:
    memo = RedactionMemo((ContextChunk,), size=3)
    request = CompletionRequest(
        question="a question that is long enough to be worth remembering, were it a passage",
        context=(_chunk(1, "first passage"), _chunk(2, "second passage")),
        model="m",
        history=(HistoryTurn("user", "an earlier question, also the user's own words"),),
    )
    redact_fields(request, ALL, memo=memo, partition="acme")
    assert len(memo) == 2  # the passages' texts; never the question or the history
    redact_fields(request, ALL, memo=memo, partition="globex")
    assert len(memo) == 3  # another tenant's copy is its own entry (LRU: one evicted)
    email_only = parse_kinds(["email"])
    plain: Counter[str] = Counter()
    # The same text under other kinds is redacted afresh, not served from the ALL entry.
    card = "card 4111 1111 1111 1111"
    memo.redact("acme", card, ALL, plain)
    assert memo.redact("acme", card, email_only, plain) == card
    assert len(memo) == 3
    with pytest.raises(ValueError, match="at least 1"):
        RedactionMemo((ContextChunk,), size=0)
