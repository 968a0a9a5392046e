"""Scrubbing of registered values and credential-shaped strings, in text and in logs."""

from __future__ import annotations

import logging

import pytest

from app.secrets.scrub import (
    REDACTED,
    ScrubbingFilter,
    forget_registered_secrets,
    register_secret,
    scrub,
    scrub_exception,
)
from app.secrets.values import SecretValue

OPENAI_ECHO = (
    "Error code: 401 - {'error': {'message': 'Incorrect API key provided: sk-proj-AbC1****"
    "*********************wXyZ. You can find your API key at https://platform.openai.com'}}"
)
PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\nAoGCCqGSM49\n-----END EC PRIVATE KEY-----"


@pytest.fixture(autouse=True)
def _clean_registry() -> None:
    forget_registered_secrets()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (OPENAI_ECHO, "sk-proj-AbC1"),
        ("x-api-key: sk-ant-api03-AAAABBBBCCCCDDDDEEEE", "sk-ant-api03"),
        ("key id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
        ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        (f"loaded {PEM} ok", "MHcCAQEEIB"),
        ("jwt eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl", "eyJzdWIiOiJhIn0"),
        ("vault token hvs.CAESIJabcdefghijklmnopqrstuvwxyz", "hvs.CAESIJ"),
        ("api key bk_live_0123456789abcdef0123", "bk_live_0123456789"),
        ('{"password": "correct-horse-battery"}', "correct-horse"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
    ],
)
def test_credential_shaped_strings_are_removed(text: str, secret: str) -> None:
    scrubbed = scrub(text)
    assert secret not in scrubbed
    assert REDACTED in scrubbed


def test_ordinary_text_is_left_alone() -> None:
    text = "app.secrets.values: tenant acme asked for tenants/acme/openai; the token is valid"
    assert scrub(text) == text


def test_registered_values_are_removed_even_without_a_known_shape() -> None:
    register_secret(SecretValue("plain-looking-canary-4711"))
    register_secret(SecretValue("abc"))  # too short to scrub safely; ignored
    assert scrub("got plain-looking-canary-4711 back") == f"got {REDACTED} back"
    assert scrub("abc") == "abc"


def test_scrub_exception_names_the_type_and_hides_the_key() -> None:
    message = scrub_exception(PermissionError(OPENAI_ECHO))
    assert message.startswith("PermissionError: Error code: 401")
    assert "AbC1" not in message


def test_filter_scrubs_message_args_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(SecretValue("canary-value-in-a-traceback"))
    logger = logging.getLogger("test.scrub")
    caplog.handler.addFilter(ScrubbingFilter())
    try:
        with caplog.at_level(logging.INFO):
            logger.info("calling with %s", "sk-live-0123456789abcdefghij")
            try:
                raise RuntimeError("provider said canary-value-in-a-traceback")
            except RuntimeError:
                logger.exception("provider failed")
    finally:
        caplog.handler.filters.clear()
    assert "sk-live-0123456789" not in caplog.text
    assert "canary-value-in-a-traceback" not in caplog.text
    assert "provider failed" in caplog.text
    assert "RuntimeError" in caplog.text
