"""Tenant manifests (`tenants/<id>.yaml`): parsing, JSON Schema validation, typed model."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import msgspec
import yaml

SCHEMA_FILE = "manifest.schema.json"


class ManifestError(ValueError):
    """A manifest that cannot be applied; the message names the file and the field."""


class IssuerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One identity provider whose tokens map to this tenant."""

    issuer: str
    audience: str
    jwks_uri: str | None = None
    tenant_claim: str | None = None
    tenant_claim_value: str | None = None
    roles_claim: str = "roles"
    groups_claim: str = "groups"


class IdentitySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the tenant's users and services authenticate."""

    issuers: tuple[IssuerSpec, ...] = ()


class RetrievalSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Vector isolation and embedder, fixed at onboarding."""

    isolation: Literal["shared", "dedicated"] = "shared"
    embedder: str = "bm25"


class ChainEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One provider in the tenant's ordered LLM chain."""

    provider: Literal["openai", "anthropic", "local"]
    model: str = "extractive"
    secret: str | None = None
    base_url: str | None = None


class LlmSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The tenant's LLM chain, tried in order."""

    chain: tuple[ChainEntry, ...] = (ChainEntry(provider="local"),)


class LimitsSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Rate limits and quotas, shared by all replicas (see `app/limits/`)."""

    requests_per_minute: int = 600
    """Requests per minute for the whole tenant (chat, search, documents)."""
    tokens_per_day: int = 2_000_000
    """LLM tokens (input + output) per UTC day for the whole tenant."""
    requests_per_minute_per_user: int | None = None
    """Requests per minute for one user (JWT subject); None: only the tenant limit applies."""
    requests_per_minute_per_key: int | None = None
    """Requests per minute for one API key (and its service tokens); None: tenant limit only."""


class NetworkSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Network policy; an empty list admits any address."""

    allowed_cidrs: tuple[str, ...] = ()


class PrivacySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Redaction and retention policy."""

    redact: tuple[str, ...] = ("credentials",)
    store_conversations: bool = True
    retention_days: int = 30
    trace_content: bool = False
    """Put prompts and answers on LLM spans (`gen_ai.input/output.messages`). Off: never."""


class TenantManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tenant's declarative configuration (DESIGN §5)."""

    id: str
    name: str
    identity: IdentitySpec = IdentitySpec()
    retrieval: RetrievalSpec = RetrievalSpec()
    llm: LlmSpec = LlmSpec()
    limits: LimitsSpec = LimitsSpec()
    network: NetworkSpec = NetworkSpec()
    privacy: PrivacySpec = PrivacySpec()

    def to_json(self) -> dict[str, Any]:
        """The manifest as plain JSON values, as stored in `tenants.manifest`."""
        value: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))
        return value

    def sha256(self) -> str:
        """Digest of the canonical JSON form; `apply` uses it to detect change."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema shipped in `tenants/` (packaged copy under `app/tenancy/`)."""
    text = resources.files("app.tenancy").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def parse_manifest(data: Any, *, source: str) -> TenantManifest:
    """Validate raw manifest data against the schema and return the typed manifest.

    Raises:
        ManifestError: The data does not satisfy the schema; the message names the field.
    """
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"{source}: {where}: {error.message}")
        raise ManifestError("\n".join(lines))
    try:
        manifest = msgspec.convert(data, TenantManifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{source}: {exc}") from exc
    for index, entry in enumerate(manifest.llm.chain):
        # Another tenant's ref would be refused at request time; say so at apply time.
        secret = entry.secret or ""
        if secret.startswith("tenants/") and not secret.startswith(f"tenants/{manifest.id}/"):
            raise ManifestError(
                f"{source}: llm/chain/{index}/secret: a tenant may name only its own"
                f" secrets (tenants/{manifest.id}/...) or platform/... refs"
            )
    for index, cidr in enumerate(manifest.network.allowed_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ManifestError(f"{source}: network/allowed_cidrs/{index}: {exc}") from exc
    return manifest


def load_manifest(path: Path) -> TenantManifest:
    """Read and validate one manifest file.

    Raises:
        ManifestError: Unreadable YAML or a schema violation.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    return parse_manifest(data, source=str(path))
