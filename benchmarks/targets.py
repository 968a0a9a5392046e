"""What the harness measures: one `Target` per endpoint, built from the run's tenants and words.

To add a benchmark, write a builder returning a `Target` and list it in `default_targets`; the
harness runs each target in order with the same load generator and reports it against the floor.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Literal

from benchmarks.corpus import Vocabulary

FLOOR = "floor"
BODY_VARIANTS = 1_000

Server = Literal["floor", "bulkhead", "emulator"]


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint under load.

    Attributes:
        name: Row label in the report.
        server: Which process answers it: the bare Litestar floor or Bulkhead.
        method: HTTP method.
        path: Request path.
        bodies: JSON bodies sent in rotation (empty: none).
        tokens: Bearer tokens sent in rotation, one per tenant (empty: none).
    """

    name: str
    server: Server
    method: str
    path: str
    bodies: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list, repr=False)


def floor_target() -> Target:
    """`GET /floor` on the bare Litestar app: the cheapest request this stack can serve."""
    return Target(name=FLOOR, server="floor", method="GET", path="/floor")


def search_target(vocabulary: Vocabulary, tokens: list[str], *, seed: int = 1) -> Target:
    """`POST /v1/search` with 2-3 word BM25 queries, top 10, across tenants."""
    rng = random.Random(seed)
    bodies = [
        json.dumps({"query": vocabulary.query(rng), "top_k": 10}) for _ in range(BODY_VARIANTS)
    ]
    return Target("search", "bulkhead", "POST", "/v1/search", bodies=bodies, tokens=tokens)


def chat_target(vocabulary: Vocabulary, tokens: list[str], *, seed: int = 2) -> Target:
    """`POST /v1/chat` (non-streaming, the tenants' `local` provider), across tenants."""
    rng = random.Random(seed)
    bodies = [
        json.dumps({"message": f"What does the handbook say about {vocabulary.query(rng)}?"})
        for _ in range(BODY_VARIANTS)
    ]
    return Target("chat", "bulkhead", "POST", "/v1/chat", bodies=bodies, tokens=tokens)


def default_targets(vocabulary: Vocabulary, tokens: list[str]) -> list[Target]:
    """Every benchmark, floor first."""
    return [
        floor_target(),
        search_target(vocabulary, tokens),
        chat_target(vocabulary, tokens),
    ]
