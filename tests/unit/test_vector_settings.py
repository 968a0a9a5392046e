"""Vector backend settings: the guard outside dev mode, and what Edge cannot honour."""

from __future__ import annotations

from typing import cast

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from app.config import Settings, get_settings
from app.retrieval.cli import reindex
from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.manifest import ManifestError, RetrievalSpec, TenantManifest
from app.vectors.capabilities import check_isolation
from app.vectors.index import VectorIndex
from app.vectors.spaces import DenseSpacesUnavailable, VectorSpaces


def test_edge_is_the_default_backend() -> None:
    assert Settings().vectors.backend == "edge"


@pytest.mark.parametrize(
    ("qdrant", "message"),
    [
        ({"api_key_secret": "platform/qdrant-api-key"}, "url is required"),
        ({"url": "https://qdrant.internal:6333"}, "api_key_secret is required"),
    ],
)
def test_server_mode_outside_dev_needs_a_url_and_a_key_ref(
    qdrant: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(
            vectors={"backend": "qdrant", "qdrant": qdrant},  # type: ignore[arg-type]
            secrets={"backend": "vault"},  # type: ignore[arg-type]
        )


def test_server_mode_takes_the_key_as_a_secret_ref_only() -> None:
    settings = Settings(
        vectors={  # type: ignore[arg-type]
            "backend": "qdrant",
            "qdrant": {"url": "https://q:6333", "api_key_secret": "platform/qdrant-api-key"},
        },
        secrets={"backend": "vault"},  # type: ignore[arg-type]
    )
    assert settings.vectors.qdrant.api_key_secret == "platform/qdrant-api-key"
    assert "api_key" not in type(settings.vectors.qdrant).model_fields


@pytest.mark.parametrize("dev", [True, False])
def test_a_platform_cluster_key_needs_a_backend_that_holds_platform_secrets(dev: bool) -> None:
    # The local backend stores tenant secrets only: the ref could never resolve.
    with pytest.raises(ValidationError, match="stores tenant secrets only"):
        Settings(
            dev=dev,
            vectors={  # type: ignore[arg-type]
                "backend": "qdrant",
                "qdrant": {"url": "https://q:6333", "api_key_secret": "platform/qdrant-api-key"},
            },
        )


def test_dev_mode_may_use_local_mode_without_a_key() -> None:
    settings = Settings(
        dev=True,
        vectors={"backend": "qdrant", "qdrant": {"api_key_secret": None}},  # type: ignore[arg-type]
    )
    assert settings.vectors.qdrant.url is None


def test_edge_refuses_a_dedicated_manifest_and_server_mode_accepts_it() -> None:
    manifest = TenantManifest(
        id="acme", name="Acme", retrieval=RetrievalSpec(isolation="dedicated")
    )
    with pytest.raises(ManifestError, match="dedicated needs the Qdrant server backend"):
        check_isolation(Settings(), manifest)
    check_isolation(
        Settings(dev=True, vectors={"backend": "qdrant"}),  # type: ignore[arg-type]
        manifest,
    )
    check_isolation(Settings(), TenantManifest(id="acme", name="Acme"))


@pytest.mark.parametrize("embedder", ["openai:text-embedding-3-small", "hybrid:openai:m/256"])
def test_server_mode_refuses_a_dense_embedder_rather_than_serving_bm25(embedder: str) -> None:
    manifest = TenantManifest(id="acme", name="Acme", retrieval=RetrievalSpec(embedder=embedder))
    server = Settings(dev=True, vectors={"backend": "qdrant"})  # type: ignore[arg-type]

    with pytest.raises(ManifestError, match="needs the Qdrant Edge backend"):
        check_isolation(server, manifest)
    check_isolation(Settings(), manifest)


def test_vector_spaces_without_a_dense_root_refuse_a_dense_space() -> None:
    spaces = VectorSpaces(cast(VectorIndex, object()), None, search_threads=1)

    with pytest.raises(DenseSpacesUnavailable, match="need the Qdrant Edge backend"):
        spaces.index_for(EmbedderSpec.parse("hybrid:openai:m/256"))
    assert spaces.index_for(EmbedderSpec.parse("bm25")) is spaces.bm25


def test_reindex_refuses_the_server_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULKHEAD_DEV", "1")
    monkeypatch.setenv("BULKHEAD_VECTORS__BACKEND", "qdrant")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(reindex, ["--tenant", "acme", "--embedder", "bm25"])
    finally:
        get_settings.cache_clear()

    assert result.exit_code == 1
    assert "reindex needs the Qdrant Edge backend" in result.output
