"""One contract for every VectorIndex adapter.

Qdrant Edge, and Qdrant server (shared and dedicated isolation) through qdrant-client's local
mode, which implements the same client API (no Qdrant server binary exists here); the server
adapter once more over REST through the Qdrant facade (tests/qdrant_facade.py), which shows
the facade answers what the adapter sends as local mode would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.vectors.filters import parse_filter
from app.vectors.scoping import TENANT_FIELD
from tests.integration.index_harness import (
    ADAPTERS,
    FACADE,
    Harness,
    chunk,
    open_harness,
    scope,
)


@pytest.fixture(params=(*ADAPTERS, FACADE))
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    # The facade: the server adapter over qdrant-client's REST transport, as `serve --workers`.
    facade = request.getfixturevalue("qdrant_facade") if request.param == FACADE else None
    async with open_harness(request.param, tmp_path, facade_url=facade) as opened:
        for tenant_id in ("acme", "globex"):
            await opened.onboard(tenant_id)
        yield opened


async def _ids(
    harness: Harness, tenant_id: str, query: str, *groups: str, **filt: object
) -> set[str]:
    hits = await harness.index.search(
        scope=scope(tenant_id, *groups), query=query, top_k=50, matches=parse_filter(filt or None)
    )
    return {h.document_id for h in hits}


async def test_upsert_then_search_returns_the_chunk_with_its_fields(harness: Harness) -> None:
    record = chunk("acme", "handbook", "vacation policy: thirty days", metadata={"team": "hr"})
    await harness.index.upsert(scope=scope("acme"), chunks=[record])

    hits = await harness.index.search(scope=scope("acme"), query="vacation policy", top_k=5)

    assert len(hits) == 1
    hit = hits[0]
    assert (hit.chunk_id, hit.document_id, hit.title) == (
        record.chunk_id,
        "handbook",
        "title handbook",
    )
    assert hit.text == "vacation policy: thirty days"
    assert hit.metadata == {"team": "hr"}
    assert hit.score > 0
    assert await harness.index.search(scope=scope("acme"), query="unrelated words", top_k=5) == []


async def test_a_tenant_never_sees_or_counts_another_tenants_chunks(harness: Harness) -> None:
    await harness.index.upsert(
        scope=scope("acme"), chunks=[chunk("acme", "a1", "shared secret words")]
    )
    await harness.index.upsert(
        scope=scope("globex"),
        chunks=[
            chunk("globex", "g1", "shared secret words"),
            chunk("globex", "g2", "more", index=1),
        ],
    )

    assert await _ids(harness, "acme", "shared secret words") == {"a1"}
    assert await _ids(harness, "globex", "shared secret words") == {"g1"}
    assert await harness.index.count(scope=scope("acme")) == 1
    assert await harness.index.count(scope=scope("globex")) == 2
    assert await _ids(harness, "initech", "shared secret words") == set()


async def test_upsert_cannot_overwrite_a_point_of_another_tenant(harness: Harness) -> None:
    original = chunk("acme", "a1", "acme original text")
    await harness.index.upsert(scope=scope("acme"), chunks=[original])
    forged = chunk("globex", "g1", "globex takeover text", chunk_id=original.chunk_id)

    await harness.index.upsert(scope=scope("globex"), chunks=[forged])

    hits = await harness.index.search(scope=scope("acme"), query="original text", top_k=5)
    assert [h.text for h in hits] == ["acme original text"]
    # In one shared collection the id is taken, so the write is dropped; a dedicated tenant
    # writes to its own collection, where the id is free.
    expected = {"g1"} if harness.kind == "qdrant-dedicated" else set()
    assert await _ids(harness, "globex", "takeover") == expected


async def test_acl_groups_restrict_reads_and_untagged_documents_are_tenant_wide(
    harness: Harness,
) -> None:
    await harness.index.upsert(
        scope=scope("acme"),
        chunks=[
            chunk("acme", "public", "quarterly numbers"),
            chunk("acme", "payroll", "quarterly numbers", acl=("hr",)),
            chunk("acme", "board", "quarterly numbers", acl=("board", "execs")),
        ],
    )

    assert await _ids(harness, "acme", "quarterly numbers") == {"public"}
    assert await _ids(harness, "acme", "quarterly numbers", "hr") == {"public", "payroll"}
    assert await _ids(harness, "acme", "quarterly numbers", "execs", "hr") == {
        "public",
        "payroll",
        "board",
    }
    assert await harness.index.count(scope=scope("acme")) == 1
    assert await harness.index.count(scope=scope("acme", "execs")) == 2
    # Another tenant's members of a same-named group see nothing of acme's.
    assert await _ids(harness, "globex", "quarterly numbers", "hr", "board") == set()


async def test_caller_filters_narrow_by_value_list_and_mixed_types(harness: Harness) -> None:
    await harness.index.upsert(
        scope=scope("acme"),
        chunks=[
            chunk(
                "acme", "d1", "release notes", metadata={"team": "eng", "year": 2024, "final": True}
            ),
            chunk("acme", "d2", "release notes", metadata={"team": "ops", "year": 2025}),
            chunk("acme", "d3", "release notes", metadata={"team": "sales", "year": "2025"}),
        ],
    )

    assert await _ids(harness, "acme", "release notes", team="eng") == {"d1"}
    assert await _ids(harness, "acme", "release notes", team={"in": ["eng", "ops"]}) == {"d1", "d2"}
    assert await _ids(harness, "acme", "release notes", year={"in": [2024, 2025]}) == {"d1", "d2"}
    assert await _ids(harness, "acme", "release notes", year={"in": [2024, "2025"]}) == {"d1", "d3"}
    assert await _ids(harness, "acme", "release notes", team="eng", year=2025) == set()


async def test_boolean_filter_matches_boolean_metadata(
    harness: Harness, request: pytest.FixtureRequest
) -> None:
    if harness.kind == "edge":
        # qdrant-edge-py 0.9.0 turns MatchValue(True) into the integer 1 (its `.value` reads
        # back 1), which never equals a stored boolean: a binding defect, reported upstream-side.
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="qdrant-edge-py MatchValue(bool) -> int")
        )
    await harness.index.upsert(
        scope=scope("acme"),
        chunks=[
            chunk("acme", "d1", "release notes", metadata={"final": True}),
            chunk("acme", "d2", "release notes", metadata={"final": False}),
        ],
    )
    assert await _ids(harness, "acme", "release notes", final=True) == {"d1"}
    assert await _ids(harness, "acme", "release notes", final=False) == {"d2"}


async def test_a_filter_cannot_widen_past_the_tenant(harness: Harness) -> None:
    await harness.index.upsert(
        scope=scope("globex"), chunks=[chunk("globex", "g1", "merger plans", metadata={"x": 1})]
    )
    # A metadata key may look like ours: it is addressed under `metadata.` and matches nothing.
    assert await _ids(harness, "acme", "merger plans", x={"in": [1, "1"]}) == set()
    with pytest.raises(Exception, match="reserved"):
        parse_filter({TENANT_FIELD: "globex"})


async def test_delete_document_all_one_version_or_all_but_one(harness: Harness) -> None:
    acme = scope("acme")
    v1 = [chunk("acme", "doc", "old words", version=1, index=i) for i in range(2)]
    v2 = [chunk("acme", "doc", "new words", version=2, index=i) for i in range(3)]
    other = chunk("acme", "other", "old words new words")
    await harness.index.upsert(scope=acme, chunks=[*v1, *v2, other])
    await harness.index.upsert(scope=scope("globex"), chunks=[chunk("globex", "doc", "old words")])
    assert await harness.index.count(scope=acme) == 6

    await harness.index.delete_document(scope=acme, document_id="doc", version=2)
    assert await harness.index.count(scope=acme) == 3

    await harness.index.upsert(scope=acme, chunks=v2)
    await harness.index.delete_document(scope=acme, document_id="doc", keep_version=2)
    hits = await harness.index.search(scope=acme, query="old words new words", top_k=10)
    assert sorted(h.text for h in hits if h.document_id == "doc") == ["new words"] * 3

    await harness.index.delete_document(scope=acme, document_id="doc")
    assert await harness.index.count(scope=acme) == 1
    # Deleting acme's "doc" never touched globex's document of the same id.
    assert await _ids(harness, "globex", "old words") == {"doc"}


async def test_reingest_replaces_a_version_without_duplicates(harness: Harness) -> None:
    acme = scope("acme")
    await harness.index.upsert(scope=acme, chunks=[chunk("acme", "faq", "answer one", version=1)])
    await harness.index.upsert(scope=acme, chunks=[chunk("acme", "faq", "answer two", version=2)])
    # Between the new version's upsert and the old one's removal both exist; then only v2.
    await harness.index.delete_document(scope=acme, document_id="faq", keep_version=2)

    hits = await harness.index.search(scope=acme, query="answer", top_k=10)

    assert [h.text for h in hits] == ["answer two"]
    # Upserting the same version again is idempotent (same point ids).
    await harness.index.upsert(scope=acme, chunks=[chunk("acme", "faq", "answer two", version=2)])
    assert await harness.index.count(scope=acme) == 1


async def test_health_answers(harness: Harness) -> None:
    assert await harness.index.health() is True


async def test_bm25_scores_match_between_edge_and_server(tmp_path: Path) -> None:
    texts = [
        "the cat sat on the mat",
        "dogs chase cats around the yard",
        "a mat for the yoga class",
        "quarterly revenue grew by ten percent",
    ]
    results = {}
    for kind in ("edge", "qdrant-shared"):
        async with open_harness(kind, tmp_path / kind) as opened:
            await opened.onboard("acme")
            await opened.index.upsert(
                scope=scope("acme"), chunks=[chunk("acme", f"d{i}", t) for i, t in enumerate(texts)]
            )
            hits = await opened.index.search(scope=scope("acme"), query="cat on a mat", top_k=4)
            results[kind] = [(h.document_id, h.score) for h in hits]

    edge, server = results["edge"], results["qdrant-shared"]
    assert [d for d, _ in edge] == [d for d, _ in server]
    assert len(edge) >= 2
    for (_, a), (_, b) in zip(edge, server, strict=True):
        assert a == pytest.approx(b, rel=1e-4)


async def test_dedicated_tenants_live_in_their_own_collection(tmp_path: Path) -> None:
    async with open_harness("qdrant-dedicated", tmp_path) as opened:
        for tenant_id in ("acme", "globex"):
            await opened.onboard(tenant_id)
            await opened.index.upsert(
                scope=scope(tenant_id), chunks=[chunk(tenant_id, "d", f"{tenant_id} words")]
            )
        assert opened.client is not None
        names = opened.names
        for tenant_id in ("acme", "globex"):
            stored = await opened.client.count(names.dedicated(tenant_id))
            assert stored.count == 1
        assert (await opened.client.count(names.shared)).count == 0
