"""Embedder strings: the forms, their sizes and spaces, and what the manifest demands of them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.manifest import ManifestError, parse_manifest


@pytest.mark.parametrize(
    ("text", "kind", "model", "dims", "sent"),
    [
        ("bm25", "bm25", "", 0, False),
        ("openai:text-embedding-3-small", "dense", "text-embedding-3-small", 1536, False),
        ("openai:text-embedding-3-large/256", "dense", "text-embedding-3-large", 256, True),
        ("hybrid:openai:text-embedding-ada-002", "hybrid", "text-embedding-ada-002", 1536, False),
        ("hybrid:openai:my-model@429:1x1/64", "hybrid", "my-model@429:1x1", 64, True),
    ],
)
def test_forms_parse_to_kind_model_and_size(
    text: str, kind: str, model: str, dims: int, sent: bool
) -> None:
    spec = EmbedderSpec.parse(text)
    assert (spec.kind, spec.model, spec.dimensions, spec.explicit_dimensions) == (
        kind,
        model,
        dims,
        sent,
    )
    assert str(spec) == text, "round trip"


@pytest.mark.parametrize(
    "text", ["openai:custom-model", "openai:m/0", "openai:m/99999", "dense:openai:m/8", "BM25"]
)
def test_unknown_sizes_and_forms_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"openai:|dimensions|not bm25"):
        EmbedderSpec.parse(text)


def test_dense_and_hybrid_of_one_model_and_size_share_a_space_and_others_do_not() -> None:
    dense = EmbedderSpec.parse("openai:text-embedding-3-small/256")
    hybrid = EmbedderSpec.parse("hybrid:openai:text-embedding-3-small/256")
    other = EmbedderSpec.parse("hybrid:openai:text-embedding-3-small/512")
    assert dense.space == hybrid.space != other.space
    assert EmbedderSpec.parse("bm25").space is None
    assert "/" not in (dense.space or "/")


def _manifest(embedder: str, **retrieval: Any) -> dict[str, Any]:
    return copy.deepcopy(
        {
            "id": "acme-1",
            "name": "Acme",
            "retrieval": {"embedder": embedder, **retrieval},
            "llm": {"chain": [{"provider": "local"}]},
        }
    )


def test_a_dense_embedder_needs_a_key_from_the_manifest() -> None:
    with pytest.raises(ManifestError, match="needs a key"):
        parse_manifest(_manifest("hybrid:openai:text-embedding-3-small"), source="x")
    named = parse_manifest(
        _manifest("openai:text-embedding-3-small", openai={"secret": "tenants/acme-1/emb"}),
        source="x",
    )
    endpoint = named.retrieval.embedding_endpoint(named.llm.chain)
    assert endpoint is not None
    assert endpoint.secret == "tenants/acme-1/emb"
    from_chain = _manifest("openai:text-embedding-3-small")
    from_chain["llm"]["chain"].insert(
        0, {"provider": "openai", "model": "gpt-4o-mini", "secret": "tenants/acme-1/openai"}
    )
    parsed = parse_manifest(from_chain, source="x")
    fallback = parsed.retrieval.embedding_endpoint(parsed.llm.chain)
    assert fallback is not None
    assert fallback.secret == "tenants/acme-1/openai"


def test_an_embedder_key_of_another_tenant_is_refused() -> None:
    data = _manifest("openai:text-embedding-3-small", openai={"secret": "tenants/globex/openai"})
    with pytest.raises(ManifestError, match="retrieval/openai/secret"):
        parse_manifest(data, source="x")


def test_an_unknown_model_without_a_size_is_refused_at_apply_time() -> None:
    data = _manifest("openai:custom-model", openai={"secret": "tenants/acme-1/emb"})
    with pytest.raises(ManifestError, match=r"retrieval/embedder: .*name the vector size"):
        parse_manifest(data, source="x")
