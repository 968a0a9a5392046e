"""BM25 computed in plain Python over a given set of chunks: the reference ranking tests hold to.

Only the document side comes from the product's encoder (`qdrant_edge.Bm25`: tokens, term
frequency and length normalisation, whose `avg_len` is a fixed parameter of the encoder, not a
corpus statistic). Every corpus statistic (N, and n(t) for each query term) is counted here from
the chunks passed in, with Qdrant's IDF formula, independently of the code under test.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import qdrant_edge as qe

from app.vectors.index import ChunkRecord
from app.vectors.scoping import bm25_text

REL_TOLERANCE = 1e-5
"""The engines score in float32; this reference computes in float64."""


def idf(chunks: int, containing: int) -> float:
    """Qdrant's IDF modifier: ln((N - n + 0.5) / (n + 0.5) + 1)."""
    return math.log((chunks - containing + 0.5) / (containing + 0.5) + 1)


def reference_scores(query: str, corpus: Iterable[ChunkRecord]) -> dict[str, float]:
    """Chunk id -> BM25 score of every chunk of `corpus` that shares a term with `query`.

    `corpus` is everything the statistics are taken over (and all that can be found).
    """
    encoder = qe.Bm25()
    terms = set(encoder.embed_query(query).indices)
    weights: dict[str, dict[int, float]] = {}
    for chunk in corpus:
        vector = encoder.embed_document(bm25_text(chunk))
        weights[chunk.chunk_id] = dict(zip(vector.indices, vector.values, strict=True))
    containing = Counter(
        term for terms_of in weights.values() for term in terms_of if term in terms
    )
    scores: dict[str, float] = {}
    for chunk_id, terms_of in weights.items():
        matched = terms & terms_of.keys()
        if matched:
            scores[chunk_id] = sum(
                idf(len(weights), containing[term]) * terms_of[term] for term in matched
            )
    return scores


def assert_scores_match(found: dict[str, float], expected: dict[str, float]) -> None:
    """Same chunks, and each score equal to the reference within float32 precision."""
    assert found.keys() == expected.keys(), (sorted(found), sorted(expected))
    for chunk_id, score in expected.items():
        assert math.isclose(found[chunk_id], score, rel_tol=REL_TOLERANCE), (
            chunk_id,
            found[chunk_id],
            score,
        )
