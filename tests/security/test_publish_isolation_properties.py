"""Property tests: pending upserts and publishes only ever change the caller's own tenant.

Hypothesis draws a sequence of pending upserts and publishes by random tenants over a small pool
of document ids and versions, so tenants keep naming each other's documents and versions. After
every step, each tenant's searches (with several ACL group sets) and scroll must equal a model
computed independently of the code under test: a pending version is invisible, publishing
reveals the named versions with their ACL and deletes older versions of the same documents,
all within the publishing tenant. Runs on every adapter (Qdrant server as qdrant-client's
local mode, no server binary here).
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.vectors.index import ACL_EVERYONE, DocumentVersion
from app.vectors.scoping import (
    TENANT_FIELD,
    AllOf,
    FieldEquals,
    forced_condition,
    point_id,
)
from tests.integration.index_harness import ADAPTERS, Harness, chunk, open_harness, scope

TENANTS = ("acme", "globex")
DOCUMENTS = ("d1", "d2")
VERSIONS = st.integers(min_value=1, max_value=4)
ACLS = st.one_of(st.none(), st.lists(st.sampled_from(("hr", "eng")), min_size=1, max_size=2))
READERS = ((), ("hr",), ("eng",), ("hr", "eng"))


@dataclass(frozen=True)
class Upsert:
    tenant: str
    document: str
    version: int


@dataclass(frozen=True)
class Publish:
    tenant: str
    versions: tuple[tuple[str, int, tuple[str, ...] | None], ...]


STEPS = st.lists(
    st.one_of(
        st.builds(Upsert, st.sampled_from(TENANTS), st.sampled_from(DOCUMENTS), VERSIONS),
        st.builds(
            Publish,
            st.sampled_from(TENANTS),
            st.lists(
                st.tuples(
                    st.sampled_from(DOCUMENTS),
                    VERSIONS,
                    ACLS.map(lambda a: tuple(a) if a is not None else None),
                ),
                min_size=1,
                max_size=2,
            ).map(tuple),
        ),
    ),
    min_size=1,
    max_size=8,
)

# (tenant, document, version) -> None while pending, else the ACL it was published with
# (`(ACL_EVERYONE,)` for the whole tenant).
Model = dict[tuple[str, str, int], tuple[str, ...] | None]


def _apply(model: Model, step: Upsert | Publish) -> None:
    if isinstance(step, Upsert):
        model[(step.tenant, step.document, step.version)] = None
        return
    for document, version, acl in step.versions:
        if (step.tenant, document, version) in model:
            model[(step.tenant, document, version)] = acl if acl is not None else (ACL_EVERYONE,)
    for document, version, _ in step.versions:
        for key in [k for k in model if k[:2] == (step.tenant, document) and k[2] < version]:
            del model[key]


def _visible(model: Model, tenant: str, groups: tuple[str, ...]) -> set[tuple[str, int]]:
    return {
        (document, version)
        for (owner, document, version), acl in model.items()
        if owner == tenant and acl is not None and (ACL_EVERYONE in acl or set(acl) & set(groups))
    }


async def _step(harness: Harness, step: Upsert | Publish) -> None:
    if isinstance(step, Upsert):
        record = chunk(step.tenant, step.document, "alpha report", version=step.version)
        await harness.index.upsert(scope=scope(step.tenant), chunks=[record], pending=True)
        return
    await harness.index.publish(
        scope=scope(step.tenant),
        versions=[DocumentVersion(d, v, acl_groups=acl) for d, v, acl in step.versions],
    )


async def _check(kind: str, steps: list[Upsert | Publish]) -> None:
    versions_of = {
        point_id(t, d, v, 0): (d, v) for t in TENANTS for d in DOCUMENTS for v in range(1, 5)
    }
    model: Model = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with open_harness(kind, Path(tmp)) as harness:
            for tenant in TENANTS:
                await harness.onboard(tenant)
            for number, step in enumerate(steps):
                await _step(harness, step)
                _apply(model, step)
                for tenant in TENANTS:
                    for groups in READERS:
                        hits = await harness.index.search(
                            scope=scope(tenant, *groups), query="alpha report", top_k=50
                        )
                        seen = {versions_of[h.chunk_id] for h in hits}
                        expected = _visible(model, tenant, groups)
                        assert seen == expected, f"{kind} step {number} {tenant}{groups}: {steps}"
                    page, _ = await harness.index.scroll_chunks(
                        scope=scope(tenant), offset=None, limit=50
                    )
                    published = {k[1:] for k, acl in model.items() if k[0] == tenant and acl}
                    assert {(c.document_id, c.version) for c in page} == published
                    stored = sum(1 for k in model if k[0] == tenant)
                    assert await harness.index.tenant_points(scope=scope(tenant)) == stored


@pytest.mark.parametrize("kind", ADAPTERS)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(steps=STEPS)
def test_pending_upserts_and_publishes_only_change_the_callers_tenant(
    kind: str, steps: list[Upsert | Publish]
) -> None:
    asyncio.run(_check(kind, steps))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    tenant=st.sampled_from(TENANTS),
    documents=st.lists(st.sampled_from(DOCUMENTS), max_size=3),
    version=VERSIONS,
)
def test_publish_conditions_keep_the_tenant_clause_first(
    tenant: str, documents: list[str], version: int
) -> None:
    for condition in (
        forced_condition(scope(tenant), reading=False, document_ids=documents, version=version),
        forced_condition(
            scope(tenant), reading=False, document_ids=documents, before_version=version
        ),
    ):
        assert condition.must[0] == FieldEquals(TENANT_FIELD, tenant)
        assert condition.must_not == ()
        assert len(condition.must) == 2
        assert isinstance(condition.must[1], AllOf)
