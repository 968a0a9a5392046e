"""Credential shapes shared by scrubbing and redaction.

Log/span scrubbing (`app.secrets.scrub`) and prompt/document redaction (`app.privacy.redact`)
recognise exactly the same keys and tokens.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

# Where a credential may start: not right after a letter ("ask-" holds no key). Not `\b`:
# `_` and digits are word characters to `\b`, and a key pasted as `_sk-...`, `9sk-...` or
# `x_bk_...` must still be found.
_START: Final = r"(?<![A-Za-z])"

# (hint, pattern): a text can match a pattern only if its hint matches too. Hints are tiny
# patterns that start with a literal, which the regex engine finds with a fast scan.
_SHAPES: Final = (
    # PEM private keys (RSA, EC, OPENSSH, PKCS#8, encrypted), whole block.
    (
        r"-----BEGIN ",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
    ),
    # OpenAI / Anthropic keys, including the masked echo "sk-proj-****abcd".
    (r"sk-", _START + r"sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_*\-]{8,}"),
    # AWS access key ids, and secret keys where they are labelled as such.
    (
        r"A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA)",
        _START + r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
    ),
    # JWTs, Vault/OpenBao tokens, Bulkhead API keys, GitHub and Slack tokens.
    (r"eyJ", _START + r"eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"),
    (r"hv[sbr]\.", _START + r"hv[sbr]\.[A-Za-z0-9_\-]{20,}"),
    (r"\.[A-Za-z0-9]{24}", _START + r"[sbr]\.[A-Za-z0-9]{24,}\b"),
    (r"bk_", _START + r"bk_[A-Za-z0-9_\-]{16,}"),
    (r"gh[pousr]_", _START + r"gh[pousr]_[A-Za-z0-9]{30,}"),
    (r"xox", _START + r"xox[abpors]-[A-Za-z0-9\-]{10,}"),
)

_PROSE_AFTER_SCHEME: Final = (
    # Words of 8+ letters that follow "token", "bearer" or "basic" in the service's own
    # messages and docs ("token algorithm not accepted", "token exchange", "token lifetime
    # exceeds the maximum"), and plain English ones such a sentence may use. Any other run of
    # 8+ characters there is taken for a credential, as it must be ("Bearer abcdefghij").
    "accepted",
    "algorithm",
    "audience",
    "credential",
    "endpoint",
    "exchange",
    "exchanged",
    "lifetime",
    "presented",
    "provided",
    "rejected",
    "required",
    "revocation",
    "rotation",
    "signature",
    "validation",
    "verification",
)

CREDENTIAL_SHAPES: Final = re.compile("|".join(pattern for _, pattern in _SHAPES))
"""Credentials recognisable by their shape alone."""

LABELLED_CREDENTIAL: Final = re.compile(
    # After a scheme word, a value, not one of the service's own words: "token algorithm
    # not accepted" is a sentence, and must reach the caller whole (`_PROSE_AFTER_SCHEME`).
    r"(?i)(\b(?:bearer|basic|token)\s+)"
    r"(?!(?:" + "|".join(_PROSE_AFTER_SCHEME) + r")(?![A-Za-z0-9._~+/=\-]))"
    r"[A-Za-z0-9._~+/=\-]{8,}"
    r"|((?:aws_secret_access_key|api[_-]?key|password|passwd|secret_key|client_secret)"
    r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]{6,}"
)
"""A label kept as it is (group 1 or 2) and the credential after it: authorization schemes,
and "api_key=...", "password: ...", "aws_secret_access_key = ..." in configs and messages."""

_SCHEME_WORDS: Final = ("bearer", "basic", "token")
_KEY_WORDS: Final = ("key", "pass", "secret")
# Characters that IGNORECASE matching treats as an ASCII letter but `str.lower` keeps as they
# are (long s, dotless i): folded, so the cheap test below sees what the pattern sees.
_FOLD: Final = str.maketrans({"\u017f": "s", "\u0131": "i"})


def may_hold_labelled_credential(text: str) -> bool:
    """False only when `LABELLED_CREDENTIAL` cannot match `text` (a cheap necessary condition).

    The labelled pattern is case-insensitive and slow (~40 us per 700 characters: every
    position tries every label). A match needs an authorization scheme word, or a key label
    (every one ends in key, password/passwd or secret) followed by `:` or `=`. Plain `in`
    checks on the lower-cased text decide that in ~2 us.
    """
    lowered = text.lower()
    if not lowered.isascii():
        lowered = lowered.translate(_FOLD)
    if any(map(lowered.__contains__, _SCHEME_WORDS)):
        return True
    return ("=" in text or ":" in text) and any(map(lowered.__contains__, _KEY_WORDS))


def shapes_for(text: str) -> re.Pattern[str] | None:
    """`CREDENTIAL_SHAPES` cut down to the alternatives `text` could match, or None.

    Python's regex engine tries every alternative at every position; checking each shape's
    hint first (a literal-led pattern: a fast scan, ~0.3 us per 800 characters, cheaper than
    `in`) makes a text without credentials ~6x cheaper, which matters on the chat path.
    Matches are the same as `CREDENTIAL_SHAPES`'s.
    """
    present = tuple(i for i, hint in enumerate(_HINTS) if hint.search(text))
    return _combined(present) if present else None


_HINTS: Final = tuple(re.compile(hint) for hint, _ in _SHAPES)


@lru_cache(maxsize=512)
def _combined(indexes: tuple[int, ...]) -> re.Pattern[str]:
    return re.compile("|".join(_SHAPES[i][1] for i in indexes))
