"""The VectorIndex contract for ranking: every BM25 statistic is the caller's own.

Runs on the same three adapters as `test_index_contract.py` (Qdrant Edge; Qdrant server with
shared and dedicated isolation through qdrant-client's local mode, no server binary here).
A tenant's BM25 scores stay bit-identical whatever other tenants store. Where tenants share
storage they are those of a plain BM25 over the chunks the caller may read (`bm25_reference`):
pending versions, ACL groups the caller lacks and the caller's metadata filter do not enter the
statistics. A dedicated collection keeps the statistics it always had: the tenant's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import AsyncQdrantClient, models

from app.vectors.edge import EdgeIndex
from app.vectors.filters import parse_filter
from app.vectors.index import ChunkRecord, DocumentVersion
from app.vectors.qdrant_collections import QdrantServerTooOld, require_tenant_statistics
from tests.integration.bm25_reference import assert_scores_match, reference_scores
from tests.integration.index_harness import ADAPTERS, Harness, chunk, open_harness, scope

SHARED = tuple(kind for kind in ADAPTERS if kind != "qdrant-dedicated")
"""Where tenants share storage: Edge, and the server's shared collection."""


async def _opened(kind: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(kind, tmp_path, dense_size=2) as opened:
        for tenant_id in ("acme", "globex"):
            await opened.onboard(tenant_id)
        yield opened


@pytest.fixture(params=ADAPTERS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async for opened in _opened(request.param, tmp_path):
        yield opened


@pytest.fixture(params=SHARED)
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async for opened in _opened(request.param, tmp_path):
        yield opened


def _docs(tenant_id: str, texts: list[str], *, dense: bool = True) -> list[ChunkRecord]:
    """One single-chunk document per text (with a dense vector of its own, for dense spaces)."""
    return [
        chunk(tenant_id, f"{tenant_id}-{n}", text, dense=[1.0, n / 10] if dense else None)
        for n, text in enumerate(texts)
    ]


async def _scores(
    harness: Harness, tenant_id: str, query: str, *groups: str, **mode: Any
) -> dict[str, float]:
    hits = await harness.index.search(
        scope=scope(tenant_id, *groups), query=query, top_k=50, **mode
    )
    return {h.chunk_id: h.score for h in hits}


GLOBEX = [
    "the zorblat shipment left on monday",
    "a zorblat and its quux arrived",
    "quux inventory is counted weekly",
    "plain words about the warehouse",
    "nothing unusual in this one",
]


async def test_another_tenants_documents_never_move_a_tenants_scores(harness: Harness) -> None:
    """The issue's measurement: 80 of acme's documents hold a word globex uses twice.

    Before the fix globex's score for `zorblat` fell from 6.39 to 1.78 once acme had ingested
    them, and rose for `quux`, a word acme never used (its share of a larger shard shrank).
    """
    globex = _docs("globex", GLOBEX)
    await harness.index.upsert(scope=scope("globex"), chunks=globex)
    before = {q: await _scores(harness, "globex", q) for q in ("zorblat", "quux", "zorblat quux")}

    await harness.index.upsert(
        scope=scope("acme"), chunks=_docs("acme", [f"zorblat memo {n}" for n in range(80)])
    )
    after_ingest = {q: await _scores(harness, "globex", q) for q in before}
    await harness.index.delete_tenant(scope=scope("acme"))
    after_offboarding = {q: await _scores(harness, "globex", q) for q in before}

    assert after_ingest == before
    assert after_offboarding == before
    for query, scores in before.items():
        assert_scores_match(scores, reference_scores(query, globex))


async def test_statistics_count_only_the_chunks_the_caller_may_read(shared: Harness) -> None:
    """Within a tenant too: chunks of groups the caller lacks do not enter its statistics."""
    harness = shared
    public = _docs("acme", ["zorblat handbook", "quux handbook", "zorblat and quux policy"])
    board = [
        chunk("acme", f"board-{n}", f"zorblat board minutes {n}", acl=("board",), dense=[0.0, 1.0])
        for n in range(12)
    ]
    await harness.index.upsert(scope=scope("acme"), chunks=public + board)

    for query in ("zorblat", "zorblat quux"):
        outsider = await _scores(harness, "acme", query, "hr")
        member = await _scores(harness, "acme", query, "board")
        assert_scores_match(outsider, reference_scores(query, public))
        assert_scores_match(member, reference_scores(query, public + board))


async def test_a_pending_version_enters_the_statistics_only_once_published(
    shared: Harness,
) -> None:
    harness = shared
    current = _docs("acme", ["zorblat once", "quux once", "filler words"])
    await harness.index.upsert(scope=scope("acme"), chunks=current)
    before = await _scores(harness, "acme", "zorblat quux")
    # A re-ingest of acme-0 (ten chunks full of zorblat) written but not published: a crash
    # between commit and publish leaves exactly this until the reconcile pass.
    new = [
        chunk("acme", "acme-0", "zorblat zorblat zorblat", version=2, index=i, dense=[1.0, 0.0])
        for i in range(10)
    ]
    await harness.index.upsert(scope=scope("acme"), chunks=new, pending=True)

    assert await _scores(harness, "acme", "zorblat quux") == before

    await harness.index.publish(scope=scope("acme"), versions=[DocumentVersion("acme-0", 2, None)])
    assert_scores_match(
        await _scores(harness, "acme", "zorblat quux"),
        reference_scores("zorblat quux", new + current[1:]),
    )


async def test_a_dedicated_collection_keeps_its_own_statistics_as_before(
    tmp_path: Path,
) -> None:
    """`isolation: dedicated` is left as it was: its statistics are already the tenant's.

    The collection holds the tenant alone; its statistics count every chunk stored there,
    pending versions and all groups.
    """
    async with open_harness("qdrant-dedicated", tmp_path, dense_size=2) as harness:
        await harness.onboard("acme")
        await harness.onboard("globex")
        public = _docs("acme", ["zorblat handbook", "quux handbook", "zorblat and quux"])
        board = [
            chunk("acme", f"board-{n}", f"zorblat minutes {n}", acl=("board",), dense=[0.0, 1.0])
            for n in range(5)
        ]
        await harness.index.upsert(scope=scope("acme"), chunks=public + board)
        await harness.index.upsert(scope=scope("globex"), chunks=_docs("globex", ["zorblat"] * 40))

        scores = await _scores(harness, "acme", "zorblat quux")

    expected = reference_scores("zorblat quux", public + board)
    assert_scores_match(scores, {c.chunk_id: expected[c.chunk_id] for c in public})


async def test_a_metadata_filter_narrows_the_results_not_the_statistics(harness: Harness) -> None:
    texts = ["zorblat report", "zorblat memo", "quux memo", "zorblat quux note"]
    records = [
        chunk("acme", f"d{n}", text, metadata={"team": "hr" if n % 2 else "eng"}, dense=[1.0, n])
        for n, text in enumerate(texts)
    ]
    await harness.index.upsert(scope=scope("acme"), chunks=records)

    everything = await _scores(harness, "acme", "zorblat quux")
    hits = await harness.index.search(
        scope=scope("acme"),
        query="zorblat quux",
        top_k=50,
        matches=parse_filter({"team": "hr"}),
    )

    assert {h.chunk_id for h in hits} == {records[1].chunk_id, records[3].chunk_id}
    assert all(h.score == everything[h.chunk_id] for h in hits)


async def test_the_bm25_leg_of_hybrid_search_ranks_with_the_tenants_statistics(
    harness: Harness,
) -> None:
    """RRF reads the legs' ranks: globex's BM25 order must not follow acme's vocabulary.

    For globex `quux` is rarer than `zorblat`, so the `quux` document leads the BM25 leg. With
    shard-wide statistics acme's 80 `quux` documents made `zorblat` the rarer word, and the
    fused ranking changed.
    """
    globex = _docs("globex", ["zorblat notes", "quux notes", "zorblat extra", "zorblat again"])
    await harness.index.upsert(scope=scope("globex"), chunks=globex)
    hybrid = {"dense": [1.0, 0.0]}
    before = await _scores(harness, "globex", "zorblat quux", **hybrid)

    await harness.index.upsert(
        scope=scope("acme"), chunks=_docs("acme", [f"quux item {n}" for n in range(80)])
    )

    assert await _scores(harness, "globex", "zorblat quux", **hybrid) == before


async def test_edge_scores_are_bit_identical_after_a_restart(tmp_path: Path) -> None:
    """The statistics are recomputed from the stored points: nothing to rebuild on start."""
    index = EdgeIndex.open(tmp_path / "edge")
    await index.upsert(scope=scope("globex"), chunks=_docs("globex", GLOBEX, dense=False))
    await index.upsert(
        scope=scope("acme"), chunks=_docs("acme", ["zorblat quux"] * 30, dense=False)
    )
    before = {h.chunk_id: h.score for h in await _edge_search(index)}
    await index.close()

    reopened = EdgeIndex.open(tmp_path / "edge")
    try:
        assert {h.chunk_id: h.score for h in await _edge_search(reopened)} == before
    finally:
        await reopened.close()


async def _edge_search(index: EdgeIndex) -> list[Any]:
    return await index.search(scope=scope("globex"), query="zorblat quux", top_k=50)


class _ReportsVersion(AsyncQdrantClient):
    """Local mode reporting another server version (a test double: no server binary here)."""

    def __init__(self, version: str) -> None:
        super().__init__(location=":memory:")
        self._version = version

    async def info(self) -> models.VersionInfo:
        return models.VersionInfo(title="qdrant", version=self._version, commit=None)


@pytest.mark.parametrize("version", ["1.18.3", "1.9.9", "0.99.0", "unknown", ""])
async def test_a_server_that_would_ignore_the_tenant_corpus_is_refused(version: str) -> None:
    client = _ReportsVersion(version)
    try:
        with pytest.raises(QdrantServerTooOld, match="per-tenant IDF"):
            await require_tenant_statistics(client)
    finally:
        await client.close()


@pytest.mark.parametrize("version", ["1.19.0", "v1.19.2", "1.20.0-dev", "2.0.0"])
async def test_a_server_that_keeps_statistics_per_tenant_is_accepted(version: str) -> None:
    client = _ReportsVersion(version)
    try:
        assert await require_tenant_statistics(client) == version
    finally:
        await client.close()
