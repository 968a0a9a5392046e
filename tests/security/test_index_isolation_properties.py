"""Property tests: no search on any adapter returns a chunk outside the caller's (tenant, groups).

Hypothesis draws tenants, documents (with ACL groups and metadata that imitates our own fields:
`tenant_id`, `_bulkhead_acl`), callers, and raw request filters built to attack the forced
condition: keys naming `tenant_id` or `_bulkhead*`, dotted/nested keys, lists, nested objects,
`should`/`$or`-style keys and operators. Every filter either is refused with a 422 or narrows
the caller's view; the model of what a caller may see is computed independently of the code
under test. BM25, dense and hybrid (RRF) searches are checked, and so are the tenant-wide reads
(scrolls and id lookups). Qdrant server runs as qdrant-client's local mode (no server binary).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.problems import ValidationFailed
from app.tenancy.scope import TenantScope
from app.vectors.filters import parse_filter
from app.vectors.index import ACL_EVERYONE
from app.vectors.scoping import TENANT_FIELD, AllOf, FieldEquals, FieldIn, forced_condition
from tests.integration.index_harness import ADAPTERS, Harness, chunk, open_harness, scope

TENANTS = ("acme", "globex", "initech")
GROUPS = ("hr", "eng", "board", ACL_EVERYONE, "acme", "tenant_id")
ATTACK_KEYS = (
    "team",
    "year",
    TENANT_FIELD,
    "TENANT_ID",
    "_bulkhead_acl",
    "_BULKHEAD_version",
    "metadata.tenant_id",
    "team.name",
    "should",
    "must",
    "$or",
    "or",
    "in",
    "",
)
# A small value domain, so a caller's filter value often equals another tenant's metadata value.
SCALARS = st.sampled_from(("acme", "globex", "hr", ACL_EVERYONE, "eng", 1, 2025, True, False))
JSON = st.recursive(
    st.one_of(SCALARS, st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from((*ATTACK_KEYS, "in")), inner, max_size=3),
    ),
    max_leaves=8,
)
VALID_FILTERS = st.dictionaries(
    st.sampled_from(("team", "year")),
    st.one_of(SCALARS, st.fixed_dictionaries({"in": st.lists(SCALARS, min_size=1, max_size=4)})),
    min_size=1,
    max_size=2,
)
ATTACK_FILTERS = st.dictionaries(
    st.sampled_from(ATTACK_KEYS),
    st.one_of(SCALARS, st.fixed_dictionaries({"in": st.lists(SCALARS, max_size=4)}), JSON),
    min_size=1,
    max_size=4,
)
# Valid filters twice as often: they are the ones that reach the store.
FILTERS = st.one_of(st.none(), VALID_FILTERS, VALID_FILTERS, ATTACK_FILTERS)
METADATA = st.fixed_dictionaries(
    {"team": SCALARS},
    optional={"year": SCALARS, TENANT_FIELD: SCALARS, "_bulkhead_acl": SCALARS},
)
DOCUMENTS = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.one_of(st.none(), st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2)),
        METADATA,
    ),
    min_size=1,
    max_size=12,
)
CALLERS = st.lists(
    st.tuples(
        st.sampled_from((*TENANTS, "umbrella")),
        st.lists(st.sampled_from(GROUPS), max_size=3),
        FILTERS,
    ),
    min_size=1,
    max_size=4,
)
SEARCH_MODES: tuple[dict[str, Any], ...] = (
    {},
    {"dense": [1.0, 0.5], "lexical": False},
    {"dense": [1.0, 0.5]},
)
"""BM25, dense nearest neighbours, and hybrid (both fused with RRF)."""
PROPERTY_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


def _visible(doc_tenant: str, acl: list[str] | None, tenant: str, groups: list[str]) -> bool:
    """The model: same tenant, and the document is tenant-wide or shares a group."""
    if doc_tenant != tenant:
        return False
    return acl is None or ACL_EVERYONE in acl or bool(set(acl) & set(groups))


async def _check(
    kind: str,
    documents: list[tuple[str, list[str] | None, dict[str, Any]]],
    callers: list[tuple[str, list[str], Any]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_harness(kind, Path(tmp), dense_size=2) as harness:
            for tenant in (*TENANTS, "umbrella"):
                await harness.onboard(tenant)
            owners: dict[str, tuple[str, list[str] | None]] = {}
            ids: dict[str, str] = {}
            for number, (tenant, acl, metadata) in enumerate(documents):
                doc_id = f"doc{number}"
                owners[doc_id] = (tenant, acl)
                record = chunk(
                    tenant,
                    doc_id,
                    f"alpha report {number}",
                    metadata=metadata,
                    acl=tuple(acl) if acl is not None else None,
                    dense=[1.0, float(number % 3)],
                )
                await harness.index.upsert(scope=scope(tenant), chunks=[record])
                ids[record.chunk_id] = doc_id
            for tenant, groups, raw_filter in callers:
                matches = None
                refusal: ValidationFailed | None = None
                try:
                    matches = parse_filter(raw_filter)
                except ValidationFailed as refused:
                    refusal = refused
                assert refusal is None or refusal.status == 422
                caller = scope(tenant, *groups)
                allowed = {d for d, (t, acl) in owners.items() if _visible(t, acl, tenant, groups)}
                for mode in SEARCH_MODES:
                    if matches is not None:
                        hits = await harness.index.search(
                            scope=caller, query="alpha report", top_k=50, matches=matches, **mode
                        )
                        leaked = {h.document_id for h in hits} - allowed
                        assert not leaked, f"{kind} {mode}: {tenant}{groups} {raw_filter} {leaked}"
                    unfiltered = await harness.index.search(
                        scope=caller, query="alpha report", top_k=50, **mode
                    )
                    assert {h.document_id for h in unfiltered} == allowed, mode
                assert await harness.index.count(scope=caller) == len(allowed)
                await _check_tenant_reads(harness, caller, owners, ids)


async def _check_tenant_reads(
    harness: Harness,
    caller: TenantScope,
    owners: dict[str, tuple[str, list[str] | None]],
    ids: dict[str, str],
) -> None:
    """Scrolls and id lookups see the caller's tenant's chunks, all ACLs, and nothing else."""
    own = {d for d, (t, _) in owners.items() if t == caller.tenant_id}
    page, _ = await harness.index.scroll_chunks(scope=caller, offset=None, limit=50)
    assert {c.document_id for c in page} == own
    found = await harness.index.existing_ids(scope=caller, chunk_ids=list(ids))
    assert {ids[i] for i in found} == own


@pytest.mark.parametrize("kind", ADAPTERS)
@PROPERTY_SETTINGS
@given(documents=DOCUMENTS, callers=CALLERS)
def test_no_search_returns_a_chunk_outside_the_callers_tenant_and_groups(
    kind: str,
    documents: list[tuple[str, list[str] | None, dict[str, Any]]],
    callers: list[tuple[str, list[str], Any]],
) -> None:
    asyncio.run(_check(kind, documents, callers))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(tenant=st.sampled_from(TENANTS), groups=st.lists(st.sampled_from(GROUPS)), raw=FILTERS)
def test_forced_condition_keeps_the_caller_filter_nested_under_the_tenant(
    tenant: str, groups: list[str], raw: Any
) -> None:
    try:
        matches = parse_filter(raw)
    except ValidationFailed:
        return
    condition = forced_condition(scope(tenant, *groups), reading=True, matches=matches)

    assert condition.must_not == ()
    assert condition.must[0] == FieldEquals(TENANT_FIELD, tenant)
    assert condition.must[1] == FieldIn("_bulkhead_acl", (ACL_EVERYONE, *groups))
    rest = condition.must[2:]
    assert len(rest) == (1 if matches else 0)
    if rest:
        assert isinstance(rest[0], AllOf)
        assert all(_keys_under_metadata(c) for c in rest[0].must)


def _keys_under_metadata(clause: Any) -> bool:
    if isinstance(clause, FieldEquals | FieldIn):
        return bool(clause.key.startswith("metadata."))
    children = getattr(clause, "should", ()) or (*clause.must, *clause.must_not)
    return all(_keys_under_metadata(c) for c in children)
