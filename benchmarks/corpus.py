"""Synthetic, deterministic corpus and queries, and loading the corpus into a Qdrant Edge shard.

Words follow a Zipf law over a vocabulary of a few dozen common English words followed by
~5,000 pseudo-words, so term frequencies look like text's. A query is one common word plus one
or two pseudo-words drawn uniformly, so it matches in every tenant without matching everything.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.index import ChunkRecord

_COMMON_TEXT = (
    "policy vacation security customer invoice deploy incident report contract account"
    " travel expense laptop password onboarding support billing refund release database"
    " network backup access review budget hiring training office holiday benefit payroll"
    " vendor audit privacy schedule meeting project roadmap feature outage ticket"
)
COMMON_WORDS = tuple(_COMMON_TEXT.split())
PSEUDO_WORDS = 5_000
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
WORDS_PER_CHUNK = (60, 120)
CHUNKS_PER_DOCUMENT = 10
BATCH_SIZE = 1_000
PROGRESS_EVERY = 10_000
LOADER_SUBJECT = "bulkhead-bench-loader"


class Vocabulary:
    """The benchmark's words, their Zipf weights, and generators of text and queries."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        pseudo: set[str] = set()
        while len(pseudo) < PSEUDO_WORDS:
            pseudo.add("".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))))
        self.common = list(COMMON_WORDS)
        self.pseudo = sorted(pseudo)
        rng.shuffle(self.pseudo)
        self.words = self.common + self.pseudo

    @cached_property
    def _cum_weights(self) -> list[float]:
        return list(itertools.accumulate(1.0 / rank for rank in range(1, len(self.words) + 1)))

    def text(self, rng: random.Random, words: int) -> str:
        """`words` Zipf-distributed words, in sentences of 8 to 16 words."""
        drawn = rng.choices(self.words, cum_weights=self._cum_weights, k=words)
        sentences: list[str] = []
        start = 0
        while start < len(drawn):
            end = start + rng.randint(8, 16)
            sentence = " ".join(drawn[start:end])
            sentences.append(sentence[:1].upper() + sentence[1:] + ".")
            start = end
        return " ".join(sentences)

    def query(self, rng: random.Random) -> str:
        """A 2-3 word query: one common word and one or two pseudo-words."""
        return " ".join([rng.choice(self.common), *rng.sample(self.pseudo, rng.randint(1, 2))])


def tenant_ids(count: int) -> list[str]:
    """`bench-0001`, `bench-0002`, ..."""
    return [f"bench-{n:04d}" for n in range(1, count + 1)]


def chunk_quota(total: int, tenants: int) -> list[int]:
    """`total` chunks spread as evenly as possible over `tenants`."""
    base, extra = divmod(total, tenants)
    return [base + (1 if n < extra else 0) for n in range(tenants)]


def tenant_chunks(vocabulary: Vocabulary, tenant_id: str, count: int) -> Iterator[ChunkRecord]:
    """The tenant's `count` synthetic chunks, ten to a document; the same on every run."""
    rng = random.Random(f"bench:{tenant_id}")
    for n in range(count):
        document, index = divmod(n, CHUNKS_PER_DOCUMENT)
        document_id = f"doc-{document + 1:06d}"
        yield ChunkRecord(
            chunk_id=EdgeIndex.point_id(tenant_id, document_id, 1, index),
            document_id=document_id,
            version=1,
            index=index,
            title=f"{vocabulary.common[document % len(vocabulary.common)]} {document_id}",
            section=f"Part {index + 1}",
            text=vocabulary.text(rng, rng.randint(*WORDS_PER_CHUNK)),
            metadata={"source": "bench"},
        )


@dataclass(frozen=True, slots=True)
class LoadStats:
    """What loading the corpus took.

    Attributes:
        chunks: Chunks written.
        upsert_seconds: Time inside `EdgeIndex.upsert` (BM25 embedding and indexing).
        close_seconds: Time to flush and close the shard.
        wall_seconds: Everything, synthetic text generation included.
        upsert_cpu_seconds: The process's CPU time inside `EdgeIndex.upsert` (all threads).
    """

    chunks: int
    upsert_seconds: float
    close_seconds: float
    wall_seconds: float
    upsert_cpu_seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        """Ingest rate through `EdgeIndex.upsert` (text generation excluded)."""
        return self.chunks / self.upsert_seconds if self.upsert_seconds else 0.0

    @property
    def chunks_per_cpu_second(self) -> float:
        """Chunks per second of CPU spent in `upsert`: the rate with a core to itself."""
        return self.chunks / self.upsert_cpu_seconds if self.upsert_cpu_seconds else 0.0


async def load_corpus(
    index_path: Path,
    vocabulary: Vocabulary,
    quotas: dict[str, int],
    *,
    progress: Callable[[str], None],
) -> LoadStats:
    """Write each tenant's synthetic chunks into the shard at `index_path`, then close it.

    The shard must be closed before the server opens the same directory.
    """
    started = time.perf_counter()
    total = sum(quotas.values())
    written = 0
    upsert_seconds = upsert_cpu_seconds = 0.0
    index = EdgeIndex.open(index_path)
    try:
        for tenant_id, count in quotas.items():
            scope = TenantScope(
                tenant_id=tenant_id, subject=LOADER_SUBJECT, roles=frozenset({Role.INGEST})
            )
            chunks = tenant_chunks(vocabulary, tenant_id, count)
            while batch := list(itertools.islice(chunks, BATCH_SIZE)):
                before, cpu_before = time.perf_counter(), time.process_time()
                await index.upsert(scope=scope, chunks=batch)
                upsert_seconds += time.perf_counter() - before
                upsert_cpu_seconds += time.process_time() - cpu_before
                previous, written = written, written + len(batch)
                if written // PROGRESS_EVERY > previous // PROGRESS_EVERY or written == total:
                    progress(
                        f"  loaded {written:,}/{total:,} chunks"
                        f" ({written / upsert_seconds:,.0f} chunks/s in upsert,"
                        f" {time.perf_counter() - started:,.1f} s elapsed)"
                    )
    finally:
        closing = time.perf_counter()
        await index.close()
        close_seconds = time.perf_counter() - closing
    return LoadStats(
        chunks=written,
        upsert_seconds=upsert_seconds,
        close_seconds=close_seconds,
        wall_seconds=time.perf_counter() - started,
        upsert_cpu_seconds=upsert_cpu_seconds,
    )
