"""Each tenant's embedder and the vector space its chunks live in (`app.vectors.spaces`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.config import LlmSettings
from app.llm.breaker import BreakerRegistry
from app.llm.chains import chain_policy
from app.llm.clients import SdkClients
from app.llm.embeddings import OpenAIEmbedder
from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.manifest import EmbeddingEndpoint, TenantManifest
from app.vectors.index import VectorIndex
from app.vectors.spaces import VectorSpaces

if TYPE_CHECKING:
    from app.config import Settings
    from app.db.registry import TenantRegistry
    from app.llm.keys import SecretResolver
    from app.tenancy.scope import TenantScope


def chunk_embedding_text(title: str, section: str, text: str) -> str:
    """What a chunk's dense vector is computed from (the same fields BM25 indexes)."""
    return f"{title}\n{section}\n{text}"


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
