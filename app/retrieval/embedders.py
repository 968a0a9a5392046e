"""Each tenant's embedder and the vector space its chunks live in.

BM25 tenants share one shard (sparse vectors only). A dense or hybrid embedder's chunks live in
the shard of its embedding space (model and size), which holds a dense vector and the BM25
vector of every chunk; tenants of the same space share it behind the same forced filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import LlmSettings
from app.llm.breaker import BreakerRegistry
from app.llm.chains import chain_policy
from app.llm.clients import SdkClients
from app.llm.embeddings import OpenAIEmbedder
from app.retrieval.edge import EdgeIndex
from app.retrieval.index import VectorIndex
from app.tenancy.embedder_spec import EmbedderSpec, space_dimensions
from app.tenancy.manifest import EmbeddingEndpoint, TenantManifest

if TYPE_CHECKING:
    from app.config import Settings
    from app.db.registry import TenantRegistry
    from app.llm.keys import SecretResolver
    from app.tenancy.scope import TenantScope


def chunk_embedding_text(title: str, section: str, text: str) -> str:
    """What a chunk's dense vector is computed from (the same fields BM25 indexes)."""
    return f"{title}\n{section}\n{text}"


class DenseSpacesUnavailable(ValueError):
    """A dense embedder on a backend without dense spaces (the Qdrant server backend, for now)."""


class VectorSpaces:
    """The shards: the shared BM25 one, and one per dense embedding space, opened on first use.

    `bm25` is the configured index (Qdrant Edge or server). Dense spaces are Qdrant Edge shards
    under `dense_root`; with `dense_root` None (server mode) there are none, and a dense
    embedder is refused (`tenants apply` refuses it before any tenant can have one).
    """

    def __init__(
        self, bm25: VectorIndex, dense_root: Path | None, *, search_threads: int | None
    ) -> None:
        self.bm25 = bm25
        self._dense_root = dense_root
        self._search_threads = search_threads
        self._dense: dict[str, EdgeIndex] = {}

    def index_for(self, spec: EmbedderSpec) -> VectorIndex:
        """The shard holding the chunks of tenants embedded by `spec`.

        Raises:
            DenseSpacesUnavailable: A dense `spec` and no dense spaces (server mode).
        """
        space = spec.space
        return self.bm25 if space is None else self._space(space)

    def _space(self, space: str) -> EdgeIndex:
        if self._dense_root is None:
            raise DenseSpacesUnavailable(
                f"embedder space {space!r}: dense embedders need the Qdrant Edge backend"
            )
        index = self._dense.get(space)
        if index is None:
            index = self._dense[space] = EdgeIndex.open(
                self._dense_root / space,
                search_threads=self._search_threads,
                dense_size=space_dimensions(space),
            )
        return index

    async def delete_tenant(self, *, scope: TenantScope) -> int:
        """Remove the scope's tenant's points from every shard on disk (offboarding).

        Every dense space is swept, not only the tenant's current one: a reindex leaves the old
        space's copy behind for a grace period.
        """
        deleted = 0
        for index in self.stored():
            deleted += await index.delete_tenant(scope=scope)
        return deleted

    def stored(self) -> list[VectorIndex]:
        """The BM25 index and every dense space on disk (opened), whatever tenant uses it."""
        indexes: list[VectorIndex] = [self.bm25]
        if self._dense_root is not None and self._dense_root.is_dir():
            for directory in sorted(self._dense_root.iterdir()):
                if (directory / "edge_config.json").exists():
                    indexes.append(self._space(directory.name))
        return indexes

    async def close(self) -> None:
        """Flush and close every open shard."""
        for index in self._dense.values():
            await index.close()
        self._dense.clear()


@dataclass(frozen=True, slots=True)
class Route:
    """Where a tenant's chunks go and how its texts become vectors."""

    spec: EmbedderSpec
    index: VectorIndex
    embedder: OpenAIEmbedder | None
    """None for BM25 (the shard embeds sparse vectors itself)."""


class TenantEmbedders:
    """Resolves a tenant's embedder from its manifest, over one set of SDK connection pools."""

    def __init__(
        self,
        *,
        registry: TenantRegistry,
        spaces: VectorSpaces,
        resolver: SecretResolver,
        settings: LlmSettings,
        breakers: BreakerRegistry,
        batch_size: int,
    ) -> None:
        self._registry = registry
        self.spaces = spaces
        self._resolver = resolver
        self._settings = settings
        self._breakers = breakers
        self._batch_size = batch_size
        self._embedders: dict[tuple[str, str, str, str | None], OpenAIEmbedder] = {}
        self._specs: dict[str, EmbedderSpec] = {}
        self._sdk_clients = SdkClients()

    def route(self, scope: TenantScope) -> Route:
        """The route of the scope's tenant, as its manifest currently says."""
        record = self._registry.tenant(scope.tenant_id)
        if record is None:
            return Route(EmbedderSpec("bm25"), self.spaces.bm25, None)
        text = record.manifest.retrieval.embedder
        spec = self._specs.get(text)
        if spec is None:
            # Parsed once per distinct string: this runs on every search.
            spec = self._specs[text] = EmbedderSpec.parse(text)
        return self.route_for(scope.tenant_id, spec, record.manifest)

    def route_for(self, tenant_id: str, spec: EmbedderSpec, manifest: TenantManifest) -> Route:
        """The route `spec` would give the tenant of `manifest` (reindexing uses it).

        Raises:
            ValueError: A dense `spec` but the manifest names no OpenAI key.
        """
        index = self.spaces.index_for(spec)
        if not spec.dense:
            return Route(spec, index, None)
        endpoint = manifest.retrieval.embedding_endpoint(manifest.llm.chain)
        if endpoint is None:
            raise ValueError(f"tenant {tenant_id!r} names no OpenAI key for {spec}")
        return Route(spec, index, self._embedder(tenant_id, spec, endpoint))

    def _embedder(
        self, tenant_id: str, spec: EmbedderSpec, endpoint: EmbeddingEndpoint
    ) -> OpenAIEmbedder:
        key = (tenant_id, str(spec), endpoint.secret, endpoint.base_url)
        embedder = self._embedders.get(key)
        if embedder is None:
            embedder = self._embedders[key] = OpenAIEmbedder(
                model=spec.model,
                size=spec.dimensions,
                dimensions=spec.dimensions if spec.explicit_dimensions else None,
                secret=endpoint.secret,
                base_url=endpoint.base_url,
                resolver=self._resolver,
                policy=chain_policy(self._settings),
                breakers=self._breakers,
                batch_size=self._batch_size,
                clients=self._sdk_clients,
            )
        return embedder

    async def aclose(self) -> None:
        """Close the SDK clients' connection pools."""
        self._embedders.clear()
        await self._sdk_clients.aclose()


def tenant_embedders(
    settings: Settings, registry: TenantRegistry, spaces: VectorSpaces, resolver: SecretResolver
) -> TenantEmbedders:
    """Each tenant's embedder, with its own breakers (one per tenant and embeddings model)."""
    return TenantEmbedders(
        registry=registry,
        spaces=spaces,
        resolver=resolver,
        settings=settings.llm,
        breakers=BreakerRegistry(chain_policy(settings.llm).breaker),
        batch_size=settings.llm.embedding_batch_size,
    )
