"""The forced condition of every vector operation, decided once for every adapter.

`forced_condition` is the only place that says which points a scope may touch: the tenant (and,
for reads, the caller's ACL groups) as top-level `must` clauses, and everything the caller or
the service asks for nested as one further `must` clause. Nesting is what makes a caller's
condition narrow-only: whatever it contains (a `should`, a `must_not`), it is ANDed with the
tenant clause and can never sit beside it in an OR. Adapters translate the result to their
client's model types and add nothing of their own (docs/architecture.md, Isolation).

The stored payload layout (`chunk_payload`) lives here too, so both adapters write the same
fields the condition reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from app.tenancy.scope import TenantScope
from app.vectors.filters import MetadataMatch, Scalar
from app.vectors.index import ACL_EVERYONE, ChunkRecord, DocumentVersion, Hit

TENANT_FIELD = "tenant_id"
ACL_FIELD = "_bulkhead_acl"
VERSION_FIELD = "_bulkhead_version"
DOCUMENT_FIELD = "document_id"
METADATA_FIELD = "metadata"
HIT_FIELDS = (DOCUMENT_FIELD, "title", "section", "text", METADATA_FIELD)
BM25_VECTOR = "bm25"
DENSE_VECTOR = "dense"
RRF_K = 60
"""The constant of Reciprocal Rank Fusion, as in the original paper (Cormack et al., 2009)."""
HYBRID_CANDIDATES = 4
"""Each of the dense and BM25 legs contributes `top_k * HYBRID_CANDIDATES` candidates."""
PENDING_ACL: tuple[str, ...] = ()
"""The ACL of a pending version's chunks: no group at all, so no reader's ACL clause matches."""

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class FieldEquals:
    """`payload[key] == value` (for a list payload: the list contains `value`)."""

    key: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class FieldIn:
    """`payload[key]` is one of `values` (all strings or all integers)."""

    key: str
    values: tuple[str, ...] | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FieldBelow:
    """`payload[key] < limit` (an integer field)."""

    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class FieldEmpty:
    """`payload[key]` is an empty list (or missing)."""

    key: str


@dataclass(frozen=True, slots=True)
class HasId:
    """The point's id is one of `ids`."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every clause of `must` holds and none of `must_not` does."""

    must: tuple[Clause, ...] = ()
    must_not: tuple[Clause, ...] = ()


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one clause of `should` holds."""

    should: tuple[Clause, ...]


Clause = FieldEquals | FieldIn | FieldBelow | FieldEmpty | HasId | AllOf | AnyOf


def forced_condition(
    scope: TenantScope,
    *,
    reading: bool,
    matches: tuple[MetadataMatch, ...] = (),
    document_id: str | None = None,
    document_ids: Sequence[str] | None = None,
    version: int | None = None,
    before_version: int | None = None,
    except_version: int | None = None,
    chunk_ids: tuple[str, ...] | None = None,
    pending: bool = False,
) -> AllOf:
    """The condition of every query, count, delete and conditional upsert for `scope`.

    Args:
        scope: The verified caller; the only source of the tenant and ACL groups.
        reading: Add the ACL clause (searches and counts); writes are tenant-wide.
        matches: The caller's validated metadata filter.
        document_id: Restrict to one document.
        document_ids: Restrict to these documents.
        version: Restrict to one version.
        before_version: Restrict to versions older than this one.
        except_version: Exclude one version of it.
        chunk_ids: Restrict to these point ids (another tenant's ids then match nothing).
        pending: Restrict to pending (unpublished) points, whose ACL is `PENDING_ACL`.

    Returns:
        `AllOf(must=(tenant, [acl], [AllOf(narrowing..., must_not=...)]))`: the tenant clause
        always first, every narrowing clause nested one level down.
    """
    must: list[Clause] = [FieldEquals(TENANT_FIELD, scope.tenant_id)]
    if reading:
        must.append(FieldIn(ACL_FIELD, (ACL_EVERYONE, *scope.groups)))
    narrowing: list[Clause] = [metadata_clause(m) for m in matches]
    if document_id is not None:
        narrowing.append(FieldEquals(DOCUMENT_FIELD, document_id))
    if document_ids is not None:
        narrowing.append(FieldIn(DOCUMENT_FIELD, tuple(document_ids)))
    if version is not None:
        narrowing.append(FieldEquals(VERSION_FIELD, version))
    if before_version is not None:
        narrowing.append(FieldBelow(VERSION_FIELD, before_version))
    if chunk_ids is not None:
        narrowing.append(HasId(chunk_ids))
    if pending:
        narrowing.append(FieldEmpty(ACL_FIELD))
    must_not: tuple[Clause, ...] = ()
    if except_version is not None:
        must_not = (FieldEquals(VERSION_FIELD, except_version),)
    if narrowing or must_not:
        must.append(AllOf(must=tuple(narrowing), must_not=must_not))
    return AllOf(must=tuple(must))


def statistics_corpus(scope: TenantScope) -> AllOf:
    """The points every BM25 ranking statistic of `scope`'s searches is computed over.

    BM25's IDF needs N (how many chunks) and n(t) (how many of them contain the term t). Taken
    over a whole shard or collection, they depend on every tenant's chunks: one tenant could
    learn whether others' documents contain a word, and another tenant's ingestion would move
    its scores. Qdrant's IDF corpus (`SearchParams.idf`) counts only the points matching this
    condition, at query time: the chunks the caller may read (its tenant, its ACL groups,
    published versions only). So every statistic is a function of those chunks alone, and it is
    always that of the points stored now: ingestion, re-ingestion, deletion, reindexing,
    offboarding, crash recovery and restarts need nothing of their own to keep it right.

    The caller's metadata filter is not part of it: a filter narrows the results, not what
    a word's rarity is measured against. The document side of BM25 (term frequency and length
    normalisation, with `avg_len` a fixed encoder parameter) depends on the chunk's text alone.
    """
    return forced_condition(scope, reading=True)


def metadata_clause(match: MetadataMatch) -> Clause:
    """One caller filter entry, addressed under `metadata.` so it can never name our fields."""
    key = f"{METADATA_FIELD}.{match.key}"
    if len(match.values) == 1:
        return FieldEquals(key, match.values[0])
    strings = tuple(v for v in match.values if isinstance(v, str))
    if len(strings) == len(match.values):
        return FieldIn(key, strings)
    integers = tuple(v for v in match.values if isinstance(v, int) and not isinstance(v, bool))
    if len(integers) == len(match.values):
        return FieldIn(key, integers)
    return AnyOf(tuple(FieldEquals(key, v) for v in match.values))


def acl_values(groups: tuple[str, ...] | None) -> list[str]:
    """The stored ACL of visible chunks: their groups, or everyone for a tenant-wide document."""
    return list(groups) if groups is not None else [ACL_EVERYONE]


def chunk_payload(
    scope: TenantScope, chunk: ChunkRecord, *, pending: bool = False
) -> dict[str, Any]:
    """The stored payload of a chunk: the tenant stamped from the scope, never from the chunk.

    A `pending` chunk gets `PENDING_ACL` until its version is published (see `publish`).
    """
    return {
        TENANT_FIELD: scope.tenant_id,
        DOCUMENT_FIELD: chunk.document_id,
        VERSION_FIELD: chunk.version,
        ACL_FIELD: list(PENDING_ACL) if pending else acl_values(chunk.acl_groups),
        "chunk_index": chunk.index,
        "title": chunk.title,
        "section": chunk.section,
        "text": chunk.text,
        METADATA_FIELD: chunk.metadata,
    }


def chunk_from_payload(chunk_id: str, payload: dict[str, Any] | None) -> ChunkRecord | None:
    """The chunk a stored payload describes (scrolls; the dense vector is not read back).

    None for a pending chunk: not a chunk yet. Read as "everyone" it would be copied (reindex)
    visible to the whole tenant, whatever its document's ACL.
    """
    if payload is None:
        return None
    acl = payload.get(ACL_FIELD)
    if acl == list(PENDING_ACL):
        return None
    acl = acl or [ACL_EVERYONE]
    return ChunkRecord(
        chunk_id=chunk_id,
        document_id=payload[DOCUMENT_FIELD],
        version=int(payload.get(VERSION_FIELD, 1)),
        index=int(payload.get("chunk_index", 0)),
        title=payload.get("title", ""),
        section=payload.get("section", ""),
        text=payload.get("text", ""),
        metadata=payload.get(METADATA_FIELD) or {},
        acl_groups=None if acl == [ACL_EVERYONE] else tuple(acl),
    )


def hit_from_payload(chunk_id: str, score: float, payload: dict[str, Any] | None) -> Hit | None:
    """The search hit a scored point's payload describes."""
    if payload is None:
        return None
    return Hit(
        chunk_id=chunk_id,
        document_id=payload[DOCUMENT_FIELD],
        title=payload.get("title", ""),
        section=payload.get("section", ""),
        text=payload.get("text", ""),
        score=score,
        metadata=payload.get(METADATA_FIELD) or {},
    )


def bm25_text(chunk: ChunkRecord) -> str:
    """The text BM25 embeds for a chunk (same in every adapter, so scores are comparable)."""
    return f"{chunk.title}\n{chunk.section}\n{chunk.text}"


def point_id(tenant_id: str, document_id: str, version: int, index: int) -> str:
    """Deterministic point id; the tenant is part of it, so ids never collide across tenants."""
    return str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"bulkhead:{tenant_id}/{document_id}/{version}/{index}")
    )


def _group_documents(pairs: Iterable[tuple[K, str]]) -> dict[K, list[str]]:
    """Document ids by key, each id once: one store operation per key instead of per document."""
    groups: dict[K, dict[str, None]] = {}
    for key, document_id in pairs:
        groups.setdefault(key, {})[document_id] = None
    return {key: list(ids) for key, ids in groups.items()}


def stale_pending(scope: TenantScope, chunks: Sequence[ChunkRecord]) -> list[AllOf]:
    """What a pending upsert of `chunks` deletes first: earlier attempts at the same versions.

    One condition per version; each is the scope's forced condition narrowed to that version of
    the chunks' documents, so another tenant's points can never match.
    """
    by_version = _group_documents((c.version, c.document_id) for c in chunks)
    return [
        forced_condition(scope, reading=False, document_ids=ids, version=version)
        for version, ids in by_version.items()
    ]


@dataclass(frozen=True, slots=True)
class PublishPlan:
    """The store operations of a `publish`, in order: reveal every new version, then retire."""

    reveal: tuple[tuple[AllOf, list[str]], ...]
    """(points of a new version, the ACL they get)."""
    retire: tuple[AllOf, ...]
    """Points of the published documents' older versions, to delete."""


def publish_plan(scope: TenantScope, versions: Sequence[DocumentVersion]) -> PublishPlan:
    """The operations that publish `versions` for the scope's tenant (one per version and ACL).

    Retiring only versions *older* than the published one keeps a slower, superseded publish
    from deleting a newer version that was published first.
    """
    reveal = _group_documents(((v.version, v.acl_groups), v.document_id) for v in versions)
    retire = _group_documents((v.version, v.document_id) for v in versions)
    return PublishPlan(
        reveal=tuple(
            (
                forced_condition(scope, reading=False, document_ids=ids, version=version),
                acl_values(groups),
            )
            for (version, groups), ids in reveal.items()
        ),
        retire=tuple(
            forced_condition(scope, reading=False, document_ids=ids, before_version=version)
            for version, ids in retire.items()
        ),
    )


def other_tenants(known: Sequence[str]) -> AllOf:
    """Points of every tenant *not* in `known`: the one condition that is not tenant-scoped.

    Only the reconcile pass uses it, to find the tenant ids of offboarded tenants (which it then
    deletes one by one through `forced_condition`, by exact id); it never reads or writes points.
    """
    if not known:
        return AllOf()
    return AllOf(must_not=(FieldIn(TENANT_FIELD, tuple(known)),))
