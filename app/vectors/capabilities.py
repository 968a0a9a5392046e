"""What each vector backend can hold: checked before a manifest is applied.

Kept apart from `app/vectors/setup.py` (which imports qdrant-client, a second of imports) so
that planning a manifest on the embedded default stays quick.
"""

from __future__ import annotations

from app.config import Settings
from app.tenancy.manifest import ManifestError, TenantManifest


def check_isolation(settings: Settings, manifest: TenantManifest) -> None:
    """Refuse a manifest the configured backend cannot honour.

    Raises:
        ManifestError: `isolation: dedicated` on Qdrant Edge, whose one shard holds everyone;
            or a dense/hybrid embedder on the Qdrant server backend, whose adapter supports
            dense vectors but whose per-space collections are not wired yet (searching such
            a tenant with BM25 alone would silently ignore its embedder).
    """
    if settings.vectors.backend == "edge" and manifest.retrieval.isolation == "dedicated":
        raise ManifestError(
            f"{manifest.id}: retrieval.isolation: dedicated needs the Qdrant server backend"
            " (BULKHEAD_VECTORS__BACKEND=qdrant); Qdrant Edge keeps every tenant in one shard"
        )
    if settings.vectors.backend == "qdrant" and manifest.retrieval.embedder != "bm25":
        raise ManifestError(
            f"{manifest.id}: retrieval.embedder {manifest.retrieval.embedder!r} needs the Qdrant"
            " Edge backend; the Qdrant server backend serves bm25 only for now"
        )
