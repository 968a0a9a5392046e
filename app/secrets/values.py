"""Secret values that never print themselves, and the refs that name them."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from app.tenancy.manifest import TenantManifest
    from app.tenancy.scope import TenantScope

_REDACTED: Final = "SecretValue('**********')"
_REF = re.compile(
    r"(?:tenants/(?P<tenant>[a-z0-9-]{2,40})|platform)/(?P<name>[A-Za-z0-9_.-]{1,100})"
)

# The text is never echoed: a value pasted where a ref belongs would end up in logs.
_INVALID_REF = (
    "invalid secret ref: expected 'tenants/<tenant-id>/<name>' or 'platform/<name>'"
    " (tenant id [a-z0-9-]{2,40}; name [A-Za-z0-9_.-]{1,100}, not '.' or '..')"
)


class SecretAccessDenied(PermissionError):
    """A scope asked for a secret ref outside its tenant's prefix (docs/architecture.md)."""


class SecretValue:
    """A secret string whose `repr`, `str` and format output are redacted (docs/secrets.md).

    Call `reveal()` only at the point of use (an HTTP header, a client constructor).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plaintext. Never log, trace or store what this returns."""
        return self._value

    def __repr__(self) -> str:
        return _REDACTED

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return _REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        # Constant time, so a comparison cannot be timed to guess the value.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: `tenants/<tenant-id>/<name>` or `platform/<name>`.

    Attributes:
        tenant_id: Owning tenant, or None for a platform secret.
        name: The secret's name under its prefix.
    """

    tenant_id: str | None
    name: str

    @classmethod
    def parse(cls, text: str) -> SecretRef:
        """Parse a ref as written in a tenant manifest.

        Raises:
            ValueError: `text` is not `tenants/<tenant-id>/<name>` or `platform/<name>`.
        """
        match = _REF.fullmatch(text)
        if match is None:
            raise ValueError(_INVALID_REF)
        return cls(tenant_id=match["tenant"], name=match["name"])

    def __post_init__(self) -> None:
        # Also checked when built directly: later backends map refs to paths, so no '..'.
        if _REF.fullmatch(str(self)) is None or self.name in {".", ".."}:
            raise ValueError(_INVALID_REF)

    def __str__(self) -> str:
        if self.tenant_id is None:
            return f"platform/{self.name}"
        return f"tenants/{self.tenant_id}/{self.name}"


def ensure_ref_allowed(
    ref: SecretRef, *, scope: TenantScope, platform_refs: frozenset[str] = frozenset()
) -> None:
    """Refuse a ref outside the caller's tenant unless the tenant opted into it.

    Args:
        ref: The ref about to be resolved.
        scope: The request's verified tenant scope.
        platform_refs: Platform refs the tenant's manifest explicitly opts into.

    Raises:
        SecretAccessDenied: `ref` is neither under `scope`'s tenant nor an opted-in platform ref.
    """
    if ref.tenant_id is not None and ref.tenant_id == scope.tenant_id:
        return
    if ref.tenant_id is None and str(ref) in platform_refs:
        return
    raise SecretAccessDenied(f"tenant {scope.tenant_id!r} may not resolve secret ref '{ref}'")


def opted_in_platform_refs(manifest: TenantManifest | None) -> frozenset[str]:
    """The platform refs a manifest opts into: those its LLM chain or embedder names explicitly.

    A tenant whose manifest says `secret: platform/openai` has chosen the platform's key; no
    other platform ref is resolvable for it.
    """
    if manifest is None:
        return frozenset()
    named = [entry.secret for entry in manifest.llm.chain]
    if manifest.retrieval.openai is not None:
        named.append(manifest.retrieval.openai.secret)
    return frozenset(ref for ref in named if ref is not None and ref.startswith("platform/"))
