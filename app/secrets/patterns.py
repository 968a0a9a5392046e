"""Credential shapes shared by scrubbing and redaction.

Log/span scrubbing (`app.secrets.scrub`) and prompt/document redaction (`app.privacy.redact`)
recognise exactly the same keys and tokens.
"""

from __future__ import annotations

import re
from typing import Final

CREDENTIAL_SHAPES: Final = re.compile(
    "|".join(
        (
            # PEM private keys (RSA, EC, OPENSSH, PKCS#8, encrypted), whole block.
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?"
            r"(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
            # OpenAI / Anthropic keys, including the masked echo "sk-proj-****abcd".
            r"\bsk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_*\-]{8,}",
            # AWS access key ids, and secret keys where they are labelled as such.
            r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
            # JWTs, Vault/OpenBao tokens, Bulkhead API keys, GitHub and Slack tokens.
            r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
            r"\bhv[sbr]\.[A-Za-z0-9_\-]{20,}",
            r"\b[sbr]\.[A-Za-z0-9]{24,}\b",
            r"\bbk_[A-Za-z0-9_\-]{16,}",
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",
            r"\bxox[abpors]-[A-Za-z0-9\-]{10,}",
        )
    )
)
"""Credentials recognisable by their shape alone."""

LABELLED_CREDENTIAL: Final = re.compile(
    r"(?i)(\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=\-]{8,}"
    r"|((?:aws_secret_access_key|api[_-]?key|password|passwd|secret_key|client_secret)"
    r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]{6,}"
)
"""A label kept as it is (group 1 or 2) and the credential after it: authorization schemes,
and "api_key=...", "password: ...", "aws_secret_access_key = ..." in configs and messages."""

CREDENTIAL_LABELS: Final = ("bearer", "basic", "token", "key", "pass", "secret")
"""Lower-case words at least one of which a text must contain for `LABELLED_CREDENTIAL` to
match: the labelled pattern is case-insensitive and slow, most texts have none of these."""
