"""What an answer is grounded in: numbered passages, trimmed history, and its citations.

The citation rule, the same for `/v1/chat` (plain and streamed) and `/v1/chat/completions`
(plain and streamed): the model is given the retrieved passages numbered 1..N in retrieval
order, and `[n]` in its answer names passage n. An answer's `citations` are the passages it
cites, each once, in the order of their first marker, each with its `marker`: `[n]` is the
citation whose `marker` is n, not the n-th entry. A marker naming no passage (`[9]` of 5) is
not a source. Only the stream's `passages` event lists every passage the model was given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.config import ChatSettings
from app.llm.provider import ContextChunk, HistoryTurn
from app.tenancy.manifest import ChainEntry
from app.vectors.index import Hit

_MARKER = re.compile(r"\[(\d{1,3})\]")
SNIPPET_CHARS = 240


@dataclass(frozen=True, slots=True)
class CitedSource:
    """A context chunk the answer cites."""

    marker: int
    hit: Hit


def estimate_tokens(text: str) -> int:
    """Tokens of `text`, estimated at four characters each (no tokenizer per model)."""
    return (len(text) + 3) // 4


def history_budget(entries: Sequence[ChainEntry], settings: ChatSettings) -> int:
    """The history budget of a request that any of `entries` may answer: the smallest."""
    budgets = [
        settings.history_tokens_by_model.get(f"{e.provider}/{e.model}", settings.history_tokens)
        for e in entries
    ]
    return min(budgets, default=settings.history_tokens)


def fit_history(turns: Sequence[HistoryTurn], budget: int) -> tuple[tuple[HistoryTurn, ...], int]:
    """The most recent turns within `budget` tokens, oldest first, and how many were left out.

    The kept history starts with a user turn, so it alternates as provider APIs expect.
    """
    kept: list[HistoryTurn] = []
    used = 0
    for turn in reversed(turns):
        cost = estimate_tokens(turn.text)
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return tuple(kept), len(turns) - len(kept)


def context_chunks(hits: Sequence[Hit]) -> tuple[ContextChunk, ...]:
    """The hits as numbered passages; marker n is hit n (1-based)."""
    return tuple(
        ContextChunk(
            marker=i,
            document_id=h.document_id,
            chunk_id=h.chunk_id,
            title=h.title,
            text=h.text,
            score=h.score,
        )
        for i, h in enumerate(hits, start=1)
    )


def cited(answer: str, hits: Sequence[Hit]) -> list[CitedSource]:
    """The hits whose markers the answer uses, in order of first citation.

    Markers that name no retrieved passage (a model inventing `[9]` out of 5) are not sources.
    """
    sources: list[CitedSource] = []
    seen: set[int] = set()
    for match in _MARKER.finditer(answer):
        marker = int(match.group(1))
        if 1 <= marker <= len(hits) and marker not in seen:
            seen.add(marker)
            sources.append(CitedSource(marker, hits[marker - 1]))
    return sources


def citation(marker: int, hit: Hit) -> dict[str, Any]:
    """A source as clients see it: marker, document, chunk, title, score, snippet."""
    return {
        "marker": marker,
        "document_id": hit.document_id,
        "chunk_id": hit.chunk_id,
        "title": hit.title,
        "score": hit.score,
        "snippet": hit.text[:SNIPPET_CHARS],
    }


def stored_context(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The passages an answer saw, as sealed with the answer."""
    return [
        {
            "marker": i,
            "document_id": h.document_id,
            "chunk_id": h.chunk_id,
            "title": h.title,
            "text": h.text,
        }
        for i, h in enumerate(hits, start=1)
    ]
