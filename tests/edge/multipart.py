"""Multipart bodies written byte for byte (clients percent-escape odd bytes; attackers do not)."""

from __future__ import annotations

BOUNDARY = b"edgeboundary"


def raw_multipart(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, str]:
    """A body from (Content-Disposition parameters, content) pairs, and its content type."""
    body = b"".join(
        b"--"
        + BOUNDARY
        + b"\r\nContent-Disposition: form-data; "
        + params
        + b"\r\nContent-Type: text/plain\r\n\r\n"
        + content
        + b"\r\n"
        for params, content in parts
    )
    content_type = f"multipart/form-data; boundary={BOUNDARY.decode()}"
    return body + b"--" + BOUNDARY + b"--\r\n", content_type
