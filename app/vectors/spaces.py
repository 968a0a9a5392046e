"""The vector spaces: the shared BM25 shard, and one shard per dense embedding space.

BM25 tenants share one shard (sparse vectors only). A dense or hybrid embedder's chunks live in
the shard of its embedding space (model and size), which holds a dense vector and the BM25
vector of every chunk; tenants of the same space share it behind the same forced filter.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.tenancy.embedder_spec import EmbedderSpec, space_dimensions
from app.vectors.edge import EdgeIndex
from app.vectors.index import VectorIndex

if TYPE_CHECKING:
    from app.tenancy.scope import TenantScope


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
