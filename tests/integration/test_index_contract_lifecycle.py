"""The VectorIndex contract, continued: dense and hybrid search, scrolls, ids, tenant deletion.

Runs on the same three adapters as `test_index_contract.py` (Qdrant Edge; Qdrant server with
shared and dedicated isolation through qdrant-client's local mode, no server binary here).
Every operation is attacked with another tenant's identical data or ids.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.vectors.filters import parse_filter
from app.vectors.index import ChunkRecord
from tests.integration.index_harness import ADAPTERS, Harness, chunk, open_harness, scope

DIMS = 4
NORTH = [1.0, 0.0, 0.0, 0.0]
EAST = [0.0, 1.0, 0.0, 0.0]
UP = [0.0, 0.0, 1.0, 0.0]


@pytest.fixture(params=ADAPTERS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(request.param, tmp_path) as opened:
        for tenant_id in ("acme", "globex"):
            await opened.onboard(tenant_id)
        yield opened


@pytest.fixture(params=ADAPTERS)
async def dense(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(request.param, tmp_path, dense_size=DIMS) as opened:
        for tenant_id in ("acme", "globex"):
            await opened.onboard(tenant_id)
        yield opened


async def _scroll_all(harness: Harness, tenant_id: str, limit: int) -> list[ChunkRecord]:
    chunks: list[ChunkRecord] = []
    offset: str | None = None
    for _ in range(20):
        page, offset = await harness.index.scroll_chunks(
            scope=scope(tenant_id), offset=offset, limit=limit
        )
        assert len(page) <= limit
        chunks.extend(page)
        if offset is None:
            return chunks
    raise AssertionError("scroll did not end")


async def test_scroll_pages_through_the_tenants_chunks_whatever_their_acl(
    harness: Harness,
) -> None:
    mine = [
        chunk("acme", "doc", f"text {i}", index=i, version=3, metadata={"n": i}) for i in range(4)
    ]
    hidden = chunk("acme", "board", "minutes", acl=("board",))
    await harness.index.upsert(scope=scope("acme"), chunks=[*mine, hidden])
    await harness.index.upsert(
        scope=scope("globex"), chunks=[chunk("globex", f"g{i}", "text", index=i) for i in range(3)]
    )

    scrolled = await _scroll_all(harness, "acme", limit=2)

    assert sorted(c.chunk_id for c in scrolled) == sorted(c.chunk_id for c in [*mine, hidden])
    by_id = {c.chunk_id: c for c in scrolled}
    for original in [*mine, hidden]:
        back = by_id[original.chunk_id]
        assert (back.document_id, back.version, back.index, back.title, back.text) == (
            original.document_id,
            original.version,
            original.index,
            original.title,
            original.text,
        )
        assert back.metadata == original.metadata
        assert back.acl_groups == original.acl_groups
    assert len(await _scroll_all(harness, "globex", limit=10)) == 3
    assert await _scroll_all(harness, "initech", limit=10) == []


async def test_existing_ids_and_delete_chunks_only_touch_the_callers_tenant(
    harness: Harness,
) -> None:
    a1, a2 = chunk("acme", "a1", "alpha words"), chunk("acme", "a2", "alpha words", acl=("hr",))
    g1 = chunk("globex", "g1", "alpha words")
    await harness.index.upsert(scope=scope("acme"), chunks=[a1, a2])
    await harness.index.upsert(scope=scope("globex"), chunks=[g1])

    found = await harness.index.existing_ids(
        scope=scope("acme"), chunk_ids=[a1.chunk_id, a2.chunk_id, g1.chunk_id, str(uuid.uuid4())]
    )
    assert found == {a1.chunk_id, a2.chunk_id}  # ACL-hidden ones too; never globex's
    assert await harness.index.existing_ids(scope=scope("acme"), chunk_ids=[]) == set()

    await harness.index.delete_chunks(scope=scope("acme"), chunk_ids=[a2.chunk_id, g1.chunk_id])

    assert await harness.index.tenant_points(scope=scope("acme")) == 1
    assert await harness.index.tenant_points(scope=scope("globex")) == 1
    hits = await harness.index.search(scope=scope("globex"), query="alpha words", top_k=5)
    assert [h.chunk_id for h in hits] == [g1.chunk_id]


async def test_delete_tenant_removes_acl_hidden_points_and_spares_the_others(
    harness: Harness,
) -> None:
    await harness.index.upsert(
        scope=scope("acme"),
        chunks=[
            chunk("acme", "p1", "public words"),
            chunk("acme", "p2", "public words"),
            chunk("acme", "b1", "board words", acl=("board",)),
        ],
    )
    await harness.index.upsert(scope=scope("globex"), chunks=[chunk("globex", "g1", "words")])
    # Reads apply the ACL; tenant_points does not (offboarding must see everything).
    assert await harness.index.count(scope=scope("acme")) == 2
    assert await harness.index.tenant_points(scope=scope("acme")) == 3

    assert await harness.index.delete_tenant(scope=scope("acme")) == 3

    assert await harness.index.tenant_points(scope=scope("acme")) == 0
    assert await harness.index.tenant_points(scope=scope("globex")) == 1
    assert await harness.index.delete_tenant(scope=scope("initech")) == 0
    assert await harness.index.tenant_points(scope=scope("globex")) == 1


async def _seed_dense(dense: Harness) -> None:
    await dense.index.upsert(
        scope=scope("acme"),
        chunks=[
            chunk("acme", "north", "compass needle", dense=NORTH, metadata={"team": "geo"}),
            chunk("acme", "east", "zebra migration", dense=EAST, metadata={"team": "bio"}),
            chunk("acme", "secret", "board minutes", dense=NORTH, acl=("board",)),
        ],
    )
    # Another tenant's chunks match the same words and the same vectors exactly.
    await dense.index.upsert(
        scope=scope("globex"),
        chunks=[
            chunk("globex", "rival-n", "compass needle", dense=NORTH),
            chunk("globex", "rival-e", "zebra migration", dense=EAST),
        ],
    )


async def test_dense_search_finds_neighbours_within_the_tenant_and_groups(dense: Harness) -> None:
    await _seed_dense(dense)

    hits = await dense.index.search(
        scope=scope("acme"), query="", top_k=10, dense=NORTH, lexical=False
    )
    board = await dense.index.search(
        scope=scope("acme", "board"), query="", top_k=10, dense=NORTH, lexical=False
    )

    assert [h.document_id for h in hits] == ["north", "east"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert {h.document_id for h in board} == {"north", "east", "secret"}
    rival = await dense.index.search(
        scope=scope("globex"), query="", top_k=10, dense=UP, lexical=False
    )
    assert {h.document_id for h in rival} == {"rival-n", "rival-e"}


async def test_hybrid_fuses_both_legs_each_under_the_forced_filter(dense: Harness) -> None:
    await _seed_dense(dense)
    acme = scope("acme")

    lexical = await dense.index.search(scope=acme, query="zebra", top_k=10)
    fused = await dense.index.search(scope=acme, query="zebra", top_k=10, dense=NORTH)
    narrowed = await dense.index.search(
        scope=acme,
        query="zebra",
        top_k=10,
        dense=NORTH,
        matches=parse_filter({"team": "bio"}),
    )

    assert [h.document_id for h in lexical] == ["east"]
    # BM25 brings "east", the dense leg "north" (nearest); RRF keeps both, nothing of globex's
    # and nothing the caller's groups hide.
    assert {h.document_id for h in fused} == {"east", "north"}
    assert all(h.score > 0 for h in fused)
    # The caller's filter narrows both legs: the dense leg's best match is filtered out.
    assert [h.document_id for h in narrowed] == ["east"]


async def test_a_dense_index_refuses_a_chunk_without_its_vector(dense: Harness) -> None:
    with pytest.raises(ValueError, match="needs a 4-d vector"):
        await dense.index.upsert(scope=scope("acme"), chunks=[chunk("acme", "d", "no vector")])
    with pytest.raises(ValueError, match="needs a 4-d vector"):
        await dense.index.upsert(
            scope=scope("acme"), chunks=[chunk("acme", "d", "short", dense=[1.0, 0.0])]
        )
    assert await dense.index.tenant_points(scope=scope("acme")) == 0
