"""`may_hold_labelled_credential` may skip `LABELLED_CREDENTIAL` only when it cannot match.

Redaction and log scrubbing run the slow case-insensitive labelled pattern only when the cheap
test says it could match; a wrong "no" would let a labelled credential through. Each test
checks the test against the pattern itself, on hand-picked and on generated texts.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.privacy.redact import RedactionKind, redact_text
from app.secrets.patterns import LABELLED_CREDENTIAL, may_hold_labelled_credential
from app.secrets.scrub import scrub

LABELLED = [
    "Authorization: Bearer abcdefgh12345678",
    "BASIC\tdXNlcjpwYXNzd29yZA==",
    "my TOKEN  abcdefghij",
    "api_key=sk12345678",
    'API-KEY: "abcdef123456"',
    "apikey = 'abcdefgh'",
    "PASSWORD : hunter2hunter2",
    "passwd=abcdefg",
    "secret_key:abcdefgh",
    "CLIENT_SECRET = abcdefgh",
    "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG",
    "\u017fecret_key=abcdefgh",  # long s: IGNORECASE matches it to s
    "ba\u017fic abcdefghijk",
    "ap\u0131_key=abcdefgh",  # dotless i
    "api_\u212aey=abcdefgh",  # Kelvin sign: IGNORECASE matches it to k
]


@pytest.mark.parametrize("text", LABELLED)
def test_labelled_credentials_pass_the_prefilter(text: str) -> None:
    assert LABELLED_CREDENTIAL.search(text), "the case itself must be a labelled credential"
    assert may_hold_labelled_credential(text)


@pytest.mark.parametrize("text", LABELLED)
def test_redaction_and_scrubbing_still_remove_them(text: str) -> None:
    secret = LABELLED_CREDENTIAL.search(text)[0]  # type: ignore[index]
    assert redact_text(text, frozenset({RedactionKind.CREDENTIALS})) != text
    assert scrub(text) != text
    assert secret not in scrub(text)


def test_ordinary_prose_is_skipped() -> None:
    """Label words inside ordinary words, without a scheme word or a `:`/`=`: skipped."""
    text = "The passenger's capital passport, keyboard shortcuts and secretary duties."
    assert not may_hold_labelled_credential(text)
    assert may_hold_labelled_credential(text.replace(",", ":"))  # a key label, then `:`
    assert may_hold_labelled_credential(text + " Tokens")


_WORDS = ["bearer", "Basic", "TOKEN", "api", "key", "KEY", "pass", "word", "wd", "secret"]
_PUNCTUATION = ["_", "-", " ", "\t", "\n", "=", ":", '"', "'"]
_OTHER = ["client_", "aws_secret_access_", "\u017f", "\u0131", "\u212a", "x", "é", "abcdefgh"]
_PIECES = st.sampled_from([*_WORDS, *_PUNCTUATION, *_OTHER, "12345678"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_prefilter_never_hides_a_match(text: str) -> None:
    if LABELLED_CREDENTIAL.search(text):
        assert may_hold_labelled_credential(text)
