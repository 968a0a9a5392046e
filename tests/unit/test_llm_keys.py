"""Scrubbing key material from provider errors, and Retry-After parsing."""

from __future__ import annotations

import httpx2

from app.llm.errors import retry_after_seconds
from app.llm.keys import REDACTED, scrub


def test_scrub_removes_the_resolved_key_and_key_shapes() -> None:
    message = (
        "Incorrect API key provided: my-custom-key-1234. Also sk-proj-abcdef123456 and"
        " sk-ant-api03-XYZxyz_987654 and bk_live_0123456789"
    )
    scrubbed = scrub(message, "my-custom-key-1234")
    for secret in ("my-custom-key-1234", "sk-proj-abcdef123456", "sk-ant-api03", "bk_live_0123"):
        assert secret not in scrubbed
    assert scrubbed.startswith(f"Incorrect API key provided: {REDACTED}.")


def test_scrub_keeps_ordinary_text() -> None:
    assert scrub("HTTP 503: overloaded", "") == "HTTP 503: overloaded"


def test_retry_after_in_seconds_milliseconds_or_a_date() -> None:
    assert retry_after_seconds(httpx2.Headers({"retry-after": "7"})) == 7
    assert retry_after_seconds(httpx2.Headers({"retry-after-ms": "250"})) == 0.25
    assert (
        retry_after_seconds(httpx2.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
    )
    assert retry_after_seconds(httpx2.Headers({})) is None
