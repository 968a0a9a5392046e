"""Tenant manifests: the shipped ones load, bad ones are refused naming the field, digests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from app.tenancy.manifest import (
    ChainEntry,
    IssuerSpec,
    ManifestError,
    TenantManifest,
    load_manifest,
    parse_manifest,
)

TENANTS = Path(__file__).resolve().parents[2] / "tenants"


def _full() -> dict[str, Any]:
    return {
        "id": "acme-1",
        "name": "Acme",
        "identity": {
            "issuers": [
                {
                    "issuer": "https://idp.example/acme",
                    "audience": "bulkhead",
                    "jwks_uri": "https://idp.example/acme/jwks",
                    "tenant_claim": "tenant",
                    "tenant_claim_value": "acme",
                }
            ]
        },
        "retrieval": {"isolation": "dedicated", "embedder": "hybrid:openai:text-embedding-3-small"},
        "llm": {
            "chain": [
                {"provider": "openai", "model": "gpt-4o-mini", "secret": "tenants/acme-1/openai"},
                {"provider": "anthropic", "model": "claude", "secret": "platform/anthropic"},
                {"provider": "local"},
            ]
        },
        "limits": {"requests_per_minute": 60, "tokens_per_day": 1000},
        "network": {"allowed_cidrs": ["10.0.0.0/8"]},
        "privacy": {"redact": ["email"], "store_conversations": False, "retention_days": 7},
    }


def _error(data: Any) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, source="tenants/acme-1.yaml")
    message = str(info.value)
    assert message.startswith("tenants/acme-1.yaml: ")
    return message


# --- shipped manifests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "name"), [("demo", "Demo Corp"), ("globex", "Globex Corporation")]
)
def test_shipped_manifests_load(tenant: str, name: str) -> None:
    manifest = load_manifest(TENANTS / f"{tenant}.yaml")
    assert manifest.id == tenant
    assert manifest.name == name
    (issuer,) = manifest.identity.issuers
    assert issuer.tenant_claim == "tenant"
    assert issuer.tenant_claim_value == tenant
    assert manifest.llm.chain == (ChainEntry(provider="local", model="extractive"),)
    assert manifest.privacy.redact == ("credentials", "email", "credit_card")


def test_shipped_manifests_are_distinct_tenants() -> None:
    demo = load_manifest(TENANTS / "demo.yaml")
    globex = load_manifest(TENANTS / "globex.yaml")
    assert demo.sha256() != globex.sha256()


def test_minimal_manifest_gets_documented_defaults() -> None:
    manifest = parse_manifest({"id": "ab", "name": "A"}, source="x")
    assert manifest.identity.issuers == ()
    assert manifest.retrieval.isolation == "shared"
    assert manifest.retrieval.embedder == "bm25"
    assert manifest.llm.chain == (ChainEntry(provider="local"),)
    assert manifest.privacy.redact == ("credentials",)


def test_full_manifest_is_typed() -> None:
    manifest = parse_manifest(_full(), source="x")
    assert isinstance(manifest, TenantManifest)
    assert isinstance(manifest.identity.issuers[0], IssuerSpec)
    assert [e.provider for e in manifest.llm.chain] == ["openai", "anthropic", "local"]
    assert manifest.llm.chain[0].secret == "tenants/acme-1/openai"
    assert manifest.limits.requests_per_minute == 60
    assert manifest.privacy.store_conversations is False


# --- refusals name the field ---------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["A", "Acme", "a", "acme_1", "acme.1", "x" * 41, "", 12])
def test_invalid_id_is_refused_naming_id(bad_id: Any) -> None:
    data = _full()
    data["id"] = bad_id
    assert ": id: " in _error(data)


def test_missing_required_field_is_refused() -> None:
    data = _full()
    del data["name"]
    message = _error(data)
    assert "(top level)" in message
    assert "'name'" in message


def test_unknown_top_level_field_is_refused() -> None:
    data = _full()
    data["billing"] = {"plan": "gold"}
    message = _error(data)
    assert "(top level)" in message
    assert "billing" in message


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("retrieval",), "retrieval"),
        (("limits",), "limits"),
        (("privacy",), "privacy"),
        (("identity", "issuers", 0), "identity/issuers/0"),
        (("llm", "chain", 1), "llm/chain/1"),
    ],
)
def test_unknown_nested_field_is_refused_naming_its_path(path: tuple[Any, ...], field: str) -> None:
    data = _full()
    target = data
    for part in path:
        target = target[part]
    target["surprise"] = True
    message = _error(data)
    assert f": {field}: " in message
    assert "surprise" in message


@pytest.mark.parametrize("present", ["tenant_claim", "tenant_claim_value"])
def test_tenant_claim_pair_must_come_together(present: str) -> None:
    data = _full()
    issuer = data["identity"]["issuers"][0]
    issuer.pop("tenant_claim" if present == "tenant_claim_value" else "tenant_claim_value")
    message = _error(data)
    assert ": identity/issuers/0: " in message
    assert "tenant_claim_value" in message


@pytest.mark.parametrize(
    "embedder", ["openai", "openai:", "bm25 ", "hybrid:bm25", "cohere:embed", "openai:a b"]
)
def test_bad_embedder_string_is_refused(embedder: str) -> None:
    data = _full()
    data["retrieval"]["embedder"] = embedder
    assert ": retrieval/embedder: " in _error(data)


@pytest.mark.parametrize(
    "embedder", ["bm25", "openai:text-embedding-3-large", "hybrid:openai:m.1/256"]
)
def test_good_embedder_strings_are_accepted(embedder: str) -> None:
    data = _full()
    data["retrieval"]["embedder"] = embedder
    assert parse_manifest(data, source="x").retrieval.embedder == embedder


@pytest.mark.parametrize(
    "secret",
    [
        "openai",
        "tenants/openai",
        "tenants/Acme/openai",
        "tenants/acme-1/sub/openai",
        "platforms/openai",
        "/tenants/acme-1/openai",
        "tenants/acme-1/",
        "tenants/../openai",
    ],
)
def test_secret_ref_under_malformed_path_is_refused(secret: str) -> None:
    data = _full()
    data["llm"]["chain"][0]["secret"] = secret
    assert ": llm/chain/0/secret: " in _error(data)


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("llm", "chain", [], "llm/chain"),
        ("limits", "requests_per_minute", 0, "limits/requests_per_minute"),
        ("privacy", "redact", ["ssn"], "privacy/redact/0"),
        ("privacy", "retention_days", 4000, "privacy/retention_days"),
        ("retrieval", "isolation", "private", "retrieval/isolation"),
    ],
)
def test_out_of_range_values_name_the_field(section: str, key: str, value: Any, field: str) -> None:
    data = _full()
    data[section][key] = value
    assert f": {field}: " in _error(data)


def test_every_violation_is_reported() -> None:
    data = _full()
    data["id"] = "BAD"
    data["limits"]["tokens_per_day"] = -1
    message = _error(data)
    assert ": id: " in message
    assert ": limits/tokens_per_day: " in message


@pytest.mark.parametrize("data", [None, [], "id: acme"])
def test_non_mapping_manifest_is_refused(data: Any) -> None:
    _error(data)


def test_unparseable_yaml_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: [unclosed\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: not valid YAML")


def test_schema_error_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text("id: acme\nname: Acme\nextra: 1\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}:3: (top level): ")


# --- digest and JSON form ------------------------------------------------------------------


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


def test_sha256_is_stable_across_key_order() -> None:
    a = parse_manifest(_full(), source="x")
    b = parse_manifest(_reverse_keys(_full()), source="x")
    assert list(_reverse_keys(_full())) != list(_full())
    assert a.sha256() == b.sha256()
    assert len(a.sha256()) == 64


def test_sha256_equal_for_explicit_defaults() -> None:
    a = parse_manifest({"id": "ab", "name": "A"}, source="x")
    b = parse_manifest({"id": "ab", "name": "A", "retrieval": {"embedder": "bm25"}}, source="x")
    assert a.sha256() == b.sha256()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("name",), "Acme Inc"),
        (("limits", "requests_per_minute"), 61),
        (("privacy", "store_conversations"), True),
        (("llm", "chain", 0, "model"), "gpt-4o"),
        (("identity", "issuers", 0, "audience"), "other"),
    ],
)
def test_sha256_changes_when_a_field_changes(path: tuple[Any, ...], value: Any) -> None:
    changed = copy.deepcopy(_full())
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert (
        parse_manifest(changed, source="x").sha256() != parse_manifest(_full(), source="x").sha256()
    )


def test_chain_order_changes_sha256() -> None:
    reordered = _full()
    reordered["llm"]["chain"].reverse()
    assert (
        parse_manifest(reordered, source="x").sha256()
        != parse_manifest(_full(), source="x").sha256()
    )


@pytest.mark.parametrize("source", ["full", "demo", "globex", "minimal"])
def test_to_json_round_trips_through_parse_manifest(source: str) -> None:
    if source == "full":
        manifest = parse_manifest(_full(), source="x")
    elif source == "minimal":
        manifest = parse_manifest({"id": "ab", "name": "A"}, source="x")
    else:
        manifest = load_manifest(TENANTS / f"{source}.yaml")
    as_json = manifest.to_json()
    again = parse_manifest(as_json, source="db")
    assert again == manifest
    assert again.sha256() == manifest.sha256()
    assert again.to_json() == as_json
