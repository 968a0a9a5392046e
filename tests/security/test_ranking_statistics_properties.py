"""Property tests: a tenant's ranking is a function of the chunks its caller may read, nothing else.

Hypothesis draws a history for one tenant (`acme`): ingests, re-ingests (a pending version, then
published), deletes and crashed re-ingests (a pending version never published, as a process
dying between commit and publish leaves it until reconcile), over documents with and without
ACL groups, written from a small vocabulary of made-up words; interleaved with a crowd of other
tenants' documents drawn from the same words. Then, for callers of `acme` with drawn ACL groups
and drawn queries:

- BM25 scores equal a reference BM25 computed here (`bm25_reference`) over the chunks the caller
  may read, alone: the published versions of `acme`'s documents visible to its groups (in a
  dedicated collection, left as it was, over every chunk `acme` stored there);
- after the crowd writes many more chunks holding every word, leaves an unpublished version
  behind, deletes documents and offboards a tenant, BM25, dense and hybrid (RRF) results, chunk
  ids and scores, are bit-identical to what they were before.

The comparison is made in the same index, before and after: two indexes built by the same
writes can differ in a score's last bits (Qdrant's segments add a chunk's per-term contributions
in an order fixed when the segment is created), which carries nothing of anyone's data.
Qdrant server runs as qdrant-client's local mode (no server binary here), shared and dedicated.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.vectors.index import ACL_EVERYONE, ChunkRecord, DocumentVersion
from tests.integration.bm25_reference import assert_scores_match, reference_scores
from tests.integration.index_harness import ADAPTERS, Harness, chunk, open_harness, scope

TENANT = "acme"
CROWD = ("globex", "initech")
WORDS = ("zorblat", "quux", "frobnitz", "wuggle", "plonk", "vacation")
GROUPS = ("hr", "eng")
DOCUMENT_IDS = ("d0", "d1", "d2", "d3", "d4")
TEXT = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
ACL = st.one_of(st.none(), st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2, unique=True))
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), st.sampled_from(DOCUMENT_IDS), TEXT, ACL),
        st.tuples(st.just("reingest"), st.sampled_from(DOCUMENT_IDS), TEXT, ACL),
        st.tuples(st.just("crash"), st.sampled_from(DOCUMENT_IDS), TEXT, ACL),
        st.tuples(st.just("delete"), st.sampled_from(DOCUMENT_IDS), st.just(""), st.none()),
    ),
    min_size=1,
    max_size=8,
)
CROWD_DOCUMENTS = st.lists(
    st.tuples(st.sampled_from(CROWD), TEXT, st.integers(min_value=1, max_value=20)),
    min_size=1,
    max_size=6,
)
"""(tenant, words, how many chunks of those words): the crowd repeats words to move any IDF."""
CALLERS = st.lists(
    st.tuples(st.lists(st.sampled_from(GROUPS), max_size=2, unique=True), TEXT),
    min_size=1,
    max_size=3,
)
SEARCH_MODES: tuple[dict[str, Any], ...] = (
    {},
    {"dense": [1.0, 0.0], "lexical": False},
    {"dense": [1.0, 0.0]},
)
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@dataclass
class Model:
    """What `acme` has published (each document's current version) and what the index holds."""

    versions: dict[str, int] = field(default_factory=dict)
    published: dict[str, list[ChunkRecord]] = field(default_factory=dict)
    stored: dict[str, list[ChunkRecord]] = field(default_factory=dict)
    """Every chunk of the document in the index: published, and pending leftovers of crashes."""
    made: int = 0
    """Chunks made so far: each gets its own dense direction, so the dense leg has no ties."""

    def chunks(self, document_id: str, version: int, text: str, acl: Any) -> list[ChunkRecord]:
        """Two chunks of `text` (the second with the text twice)."""
        records = []
        for index in range(2):
            self.made += 1
            records.append(
                chunk(
                    TENANT,
                    document_id,
                    " ".join([text] * (index + 1)),
                    version=version,
                    index=index,
                    acl=tuple(acl) if acl is not None else None,
                    dense=[1.0, self.made / 7],
                )
            )
        return records

    def readable(self, groups: list[str]) -> list[ChunkRecord]:
        """The published chunks a caller with `groups` may read."""
        return [
            c
            for records in self.published.values()
            for c in records
            if c.acl_groups is None or set(c.acl_groups) & {ACL_EVERYONE, *groups}
        ]

    def corpus(self, kind: str, groups: list[str]) -> list[ChunkRecord]:
        """What the caller's statistics are counted over.

        In shared storage, the chunks it may read. A dedicated collection is left as it was:
        its statistics are the collection's, every chunk the tenant stored.
        """
        if kind == "qdrant-dedicated":
            return [c for records in self.stored.values() for c in records]
        return self.readable(groups)


async def _replay(
    harness: Harness, operations: list[tuple[str, str, str, Any]], crowd: list[tuple[str, str, int]]
) -> Model:
    """`acme`'s history into the index, each step after one of the crowd's documents."""
    model = Model()
    index = harness.index
    for step, (kind, document_id, text, acl) in enumerate(operations):
        if step < len(crowd):
            await _crowd_document(harness, f"early{step}", *crowd[step])
        caller = scope(TENANT)
        version = model.versions.get(document_id, 0) + 1
        if kind == "delete":
            await index.delete_document(scope=caller, document_id=document_id)
            model.published.pop(document_id, None)
            model.stored.pop(document_id, None)
            continue
        records = model.chunks(document_id, version, text, acl)
        model.versions[document_id] = version
        if kind == "ingest":
            # A first ingest of an id the history already used replaces it, as the service does.
            await index.delete_document(scope=caller, document_id=document_id)
            await index.upsert(scope=caller, chunks=records)
            model.published[document_id] = model.stored[document_id] = records
            continue
        await index.upsert(scope=caller, chunks=records, pending=True)
        if kind == "reingest":
            groups = tuple(acl) if acl is not None else None
            await index.publish(
                scope=caller, versions=[DocumentVersion(document_id, version, groups)]
            )
            # Publishing retires every older version, pending leftovers included.
            model.published[document_id] = model.stored[document_id] = records
        else:
            model.stored[document_id] = model.stored.get(document_id, []) + records
    return model


async def _crowd_document(
    harness: Harness, document_id: str, tenant: str, text: str, count: int
) -> None:
    records = [chunk(tenant, document_id, text, index=i, dense=[1.0, i / 3]) for i in range(count)]
    await harness.index.upsert(scope=scope(tenant), chunks=records)


async def _crowd_churn(harness: Harness, crowd: list[tuple[str, str, int]]) -> None:
    """Everything another tenant can do to a shard: its statistics must all stay its own."""
    everything = " ".join(WORDS)
    for position, (tenant, text, count) in enumerate(crowd):
        await _crowd_document(harness, f"late{position}", tenant, f"{text} {everything}", count)
    await _crowd_document(harness, "bulk", CROWD[0], everything, 40)
    await harness.index.upsert(
        scope=scope(CROWD[0]),
        chunks=[chunk(CROWD[0], "bulk", everything, version=2, dense=[1.0, 1.0])],
        pending=True,
    )
    await harness.index.delete_document(scope=scope(CROWD[0]), document_id="early0")
    await harness.index.delete_tenant(scope=scope(CROWD[1]))


async def _results(
    harness: Harness, callers: list[tuple[list[str], str]]
) -> list[list[dict[str, float]]]:
    answers = []
    for groups, query in callers:
        per_mode = []
        for mode in SEARCH_MODES:
            hits = await harness.index.search(
                scope=scope(TENANT, *groups), query=query, top_k=50, **mode
            )
            per_mode.append({h.chunk_id: h.score for h in hits})
        answers.append(per_mode)
    return answers


async def _check(
    kind: str,
    operations: list[tuple[str, str, str, Any]],
    crowd: list[tuple[str, str, int]],
    callers: list[tuple[list[str], str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_harness(kind, Path(tmp), dense_size=2) as harness:
            for tenant in (TENANT, *CROWD):
                await harness.onboard(tenant)
            model = await _replay(harness, operations, crowd)
            before = await _results(harness, callers)
            await _crowd_churn(harness, crowd)
            after = await _results(harness, callers)

    for (groups, query), answers in zip(callers, before, strict=True):
        readable = {c.chunk_id for c in model.readable(groups)}
        reference = reference_scores(query, model.corpus(kind, groups))
        assert_scores_match(answers[0], {i: v for i, v in reference.items() if i in readable})
    assert after == before


@pytest.mark.parametrize("kind", ADAPTERS)
@PROPERTY_SETTINGS
@given(operations=OPERATIONS, crowd=CROWD_DOCUMENTS, callers=CALLERS)
def test_a_tenants_scores_depend_on_its_readable_chunks_alone(
    kind: str,
    operations: list[tuple[str, str, str, Any]],
    crowd: list[tuple[str, str, int]],
    callers: list[tuple[list[str], str]],
) -> None:
    asyncio.run(_check(kind, operations, crowd, callers))
