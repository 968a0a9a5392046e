"""Re-ingesting the same documents must not grow a Qdrant Edge shard without bound.

A real shard on disk with the shipped upkeep interval and optimizer configuration. Every
re-ingestion writes a document's chunks under new point ids and deletes the old ones; the
engine only marks them deleted, so without upkeep each round leaves its predecessor's chunks
in the segments (in memory and on disk). The footprint compared is the segments' allocated
bytes once the index is closed (close waits for an upkeep pass under way): after many rounds
it must stay that of one round, not grow with the rounds. Then the vacuumed shard is attacked:
reopened, it must hold exactly each tenant's latest version, nothing of another tenant lost.
"""

from __future__ import annotations

from pathlib import Path

import qdrant_edge as qe

from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex, edge_filter
from app.vectors.index import ChunkRecord, DocumentVersion
from app.vectors.scoping import forced_condition
from app.vectors.upkeep import UPKEEP_EVERY_CHUNKS

DOCUMENTS = 50
CHUNKS = 5
ROUND = DOCUMENTS * CHUNKS
# Four upkeep passes' worth; a whole number of intervals, so the last round ends one.
ROUNDS = 4 * UPKEEP_EVERY_CHUNKS // ROUND
WORDS = [
    "policy",
    "vacation",
    "security",
    "customer",
    "invoice",
    "deploy",
    "incident",
    "report",
    "contract",
]


def _scope(tenant: str) -> TenantScope:
    return TenantScope(tenant, "u", frozenset({Role.INGEST, Role.SEARCH}))


def _text(version: int, document: int, index: int) -> str:
    words = (WORDS[(document + index + k) % len(WORDS)] for k in range(60))
    return f"wombat v{version} " + " ".join(f"{w}{(version + k) % 89}" for k, w in enumerate(words))


async def _reingest(index: EdgeIndex, tenant: str, version: int) -> None:
    """Every document of `tenant` at `version`: written pending, then published."""
    chunks = [
        ChunkRecord(
            EdgeIndex.point_id(tenant, f"d{d}", version, i),
            f"d{d}",
            version,
            i,
            f"Doc {d}",
            f"Part {i}",
            _text(version, d, i),
        )
        for d in range(DOCUMENTS)
        for i in range(CHUNKS)
    ]
    await index.upsert(scope=_scope(tenant), chunks=chunks, pending=True)
    versions = [DocumentVersion(f"d{d}", version, None) for d in range(DOCUMENTS)]
    await index.publish(scope=_scope(tenant), versions=versions)


def _allocated(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def _points(index: EdgeIndex, tenant: str) -> int:
    """Every stored point of the tenant, whatever its ACL: read past the API on purpose."""
    condition = edge_filter(forced_condition(_scope(tenant), reading=False))
    count: int = index._shard.count(qe.CountRequest(filter=condition))
    return count


async def test_reingestion_leaves_the_shard_at_one_rounds_size(tmp_path: Path) -> None:
    once = EdgeIndex.open(tmp_path / "once")
    await _reingest(once, "a", 1)
    await once.close()
    one_round = _allocated(tmp_path / "once" / "segments")

    index = EdgeIndex.open(tmp_path / "edge")
    await _reingest(index, "b", 1)  # another tenant's documents, never re-ingested
    for version in range(1, ROUNDS):
        await _reingest(index, "a", version)
    await index.close()
    after = _allocated(tmp_path / "edge" / "segments")

    # Two tenants' live chunks (2 rounds), slack for segment files' page granularity.
    assert after <= 2 * one_round + 2 * 2**20, (
        f"{ROUNDS - 1} re-ingestions left {after / 2**20:.1f} MiB of segments;"
        f" one round takes {one_round / 2**20:.1f} MiB"
    )


async def test_the_vacuumed_shard_holds_each_tenants_latest_version(tmp_path: Path) -> None:
    rounds = UPKEEP_EVERY_CHUNKS // ROUND  # one upkeep pass, at the end
    index = EdgeIndex.open(tmp_path / "edge")
    await _reingest(index, "b", 1)
    for version in range(1, rounds):
        await _reingest(index, "a", version)
    await index.close()

    reopened = EdgeIndex.open(tmp_path / "edge")
    try:
        assert _points(reopened, "a") == ROUND
        assert _points(reopened, "b") == ROUND
        assert await reopened.count(scope=_scope("a")) == ROUND
        latest = f"wombat v{rounds - 1} "
        hits = await reopened.search(scope=_scope("a"), query="wombat", top_k=ROUND)
        assert len(hits) == ROUND
        assert all(hit.text.startswith(latest) for hit in hits)
        others = await reopened.search(scope=_scope("b"), query="wombat", top_k=ROUND)
        assert len(others) == ROUND
        assert all(hit.text.startswith("wombat v1 ") for hit in others)
    finally:
        await reopened.close()
