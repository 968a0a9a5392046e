"""The Edge adapter's dense additions attacked directly: dense, hybrid, scroll, ids, delete.

A shard with a dense vector, two tenants holding the same chunk texts; every read and write
made as one tenant must leave the other's chunks unseen and untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.index import ChunkRecord
from tests.provider_emulator import embedding

DIMS = 128
TEXTS = ["hotel night limit euros", "train second class travel", "laptop replaced three years"]


def _scope(tenant: str, groups: tuple[str, ...] = ()) -> TenantScope:
    return TenantScope(tenant, "u", frozenset({Role.SEARCH}), groups=groups)


def _chunks(tenant: str, acl: tuple[str, ...] | None = None) -> list[ChunkRecord]:
    return [
        ChunkRecord(
            chunk_id=EdgeIndex.point_id(tenant, f"d{i}", 1, 0),
            document_id=f"d{i}",
            version=1,
            index=0,
            title="",
            section="",
            text=text,
            acl_groups=acl,
            dense=embedding(f"\n\n{text}", DIMS),
        )
        for i, text in enumerate(TEXTS)
    ]


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[EdgeIndex]:
    shard = EdgeIndex.open(tmp_path / "dense", dense_size=DIMS)
    await shard.upsert(scope=_scope("a"), chunks=_chunks("a"))
    await shard.upsert(scope=_scope("b"), chunks=_chunks("b", acl=("hr",)))
    yield shard
    await shard.close()


@pytest.mark.parametrize("lexical", [False, True])
async def test_dense_and_hybrid_search_stay_in_tenant_and_acl(
    index: EdgeIndex, lexical: bool
) -> None:
    query = embedding("hotel night", DIMS)
    hits = await index.search(
        scope=_scope("a"), query="hotel night", top_k=10, dense=query, lexical=lexical
    )
    assert hits[0].document_id == "d0"
    assert {h.chunk_id for h in hits} <= {c.chunk_id for c in _chunks("a")}
    outsider = await index.search(
        scope=_scope("b"), query="hotel night", top_k=10, dense=query, lexical=lexical
    )
    assert outsider == [], "b's chunks need group hr; a's are a's"
    member = await index.search(
        scope=_scope("b", ("hr",)), query="hotel", top_k=10, dense=query, lexical=lexical
    )
    assert {h.chunk_id for h in member} == {c.chunk_id for c in _chunks("b")}


async def test_scroll_ids_and_delete_never_reach_another_tenant(index: EdgeIndex) -> None:
    a_ids = [c.chunk_id for c in _chunks("a")]
    page, offset = await index.scroll_chunks(scope=_scope("b"), offset=None, limit=2)
    rest, end = await index.scroll_chunks(scope=_scope("b"), offset=offset, limit=2)
    assert end is None
    assert {c.chunk_id for c in page + rest} == {c.chunk_id for c in _chunks("b")}
    assert all(c.acl_groups == ("hr",) for c in page + rest), "ACL survives the round trip"
    assert await index.existing_ids(scope=_scope("b"), chunk_ids=a_ids) == set()
    await index.delete_chunks(scope=_scope("b"), chunk_ids=a_ids)
    assert await index.existing_ids(scope=_scope("a"), chunk_ids=a_ids) == set(a_ids)
    await index.delete_chunks(scope=_scope("a"), chunk_ids=a_ids[:1])
    assert await index.existing_ids(scope=_scope("a"), chunk_ids=a_ids) == set(a_ids[1:])


async def test_a_chunk_without_a_vector_of_the_shards_size_is_refused(index: EdgeIndex) -> None:
    chunk = _chunks("a")[0]
    with pytest.raises(ValueError, match="128-d vector"):
        await index.upsert(scope=_scope("a"), chunks=[replace(chunk, dense=None)])
