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

from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.sourcemap import YamlSourceMap

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


class EmbeddingEndpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a dense embedder's requests go, and with which of the tenant's keys."""

    secret: str
    base_url: str | None = None


class RetrievalSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Vector isolation and embedder, fixed at onboarding (`bulkhead reindex` changes it)."""

    isolation: Literal["shared", "dedicated"] = "shared"
    embedder: str = "bm25"
    openai: EmbeddingEndpoint | None = None
    """Default for a dense embedder: the first `openai` entry of the LLM chain."""

    def embedding_endpoint(self, chain: tuple[ChainEntry, ...]) -> EmbeddingEndpoint | None:
        """The endpoint dense embeddings use, or None when the manifest names none."""
        if self.openai is not None:
            return self.openai
        for entry in chain:
            if entry.provider == "openai" and entry.secret:
                return EmbeddingEndpoint(secret=entry.secret, base_url=entry.base_url)
        return None


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
    admission: Literal["local", "exact"] = "local"
    """`local`: each replica decides on its own view, synced in batches (no round trip per
    request; may over-admit by what the other replicas admit in one sync interval). `exact`:
    one round trip to the counter store per request, never over the limit."""


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
    """A tenant's declarative configuration (the format: docs/tenants.md)."""

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


def _at(
    source: str,
    lines: YamlSourceMap | None,
    path: list[str | int],
    line_path: list[str | int] | None = None,
) -> str:
    """`file:line: field/path` for an error message (no line without a source map)."""
    line = lines.line(line_path or path) if lines is not None else None
    where = "/".join(str(p) for p in path) or "(top level)"
    return f"{source}:{line}: {where}" if line is not None else f"{source}: {where}"


def _line_path(error: jsonschema.ValidationError) -> list[str | int]:
    """Where to look up the line: the failing field, or for an unknown field the key itself."""
    path: list[str | int] = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        unknown = [key for key in error.instance if key not in known]
        if unknown:
            path.append(str(unknown[0]))
    return path


def parse_manifest(data: Any, *, source: str, lines: YamlSourceMap | None = None) -> TenantManifest:
    """Validate raw manifest data against the schema and return the typed manifest.

    Args:
        data: The decoded manifest.
        source: Where it came from (a file name), for error messages.
        lines: Node positions of the YAML text, so errors name the line too.

    Raises:
        ManifestError: The data does not satisfy the schema; the message names the field
            (and its line when `lines` is given).
    """
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        located = [_at(source, lines, list(e.absolute_path), _line_path(e)) for e in errors]
        raise ManifestError(
            "\n".join(f"{at}: {e.message}" for at, e in zip(located, errors, strict=True))
        )
    try:
        manifest = msgspec.convert(data, TenantManifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{source}: {exc}") from exc
    for index, entry in enumerate(manifest.llm.chain):
        # Another tenant's ref would be refused at request time; say so at apply time.
        secret = entry.secret or ""
        if secret.startswith("tenants/") and not secret.startswith(f"tenants/{manifest.id}/"):
            raise ManifestError(
                f"{_at(source, lines, ['llm', 'chain', index, 'secret'])}: a tenant may name"
                " only its own"
                f" secrets (tenants/{manifest.id}/...) or platform/... refs"
            )
    _check_embedder(manifest, source)
    for index, cidr in enumerate(manifest.network.allowed_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            at = _at(source, lines, ["network", "allowed_cidrs", index])
            raise ManifestError(f"{at}: {exc}") from exc
    return manifest


def _check_embedder(manifest: TenantManifest, source: str) -> None:
    retrieval = manifest.retrieval
    try:
        spec = EmbedderSpec.parse(retrieval.embedder)
    except ValueError as exc:
        raise ManifestError(f"{source}: retrieval/embedder: {exc}") from exc
    if not spec.dense:
        return
    endpoint = retrieval.embedding_endpoint(manifest.llm.chain)
    if endpoint is None:
        raise ManifestError(
            f"{source}: retrieval/openai: {retrieval.embedder} needs a key: set"
            " retrieval.openai.secret or list an openai entry with a secret in llm.chain"
        )
    if endpoint.secret.startswith("tenants/") and not endpoint.secret.startswith(
        f"tenants/{manifest.id}/"
    ):
        raise ManifestError(
            f"{source}: retrieval/openai/secret: a tenant may name only its own secrets"
            f" (tenants/{manifest.id}/...) or platform/... refs"
        )


def load_manifest(path: Path) -> TenantManifest:
    """Read and validate one manifest file.

    Raises:
        ManifestError: Unreadable YAML or a schema violation.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        lines = YamlSourceMap.parse(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    return parse_manifest(data, source=str(path), lines=lines)
