"""Document keys (an id shared by documents of different groups) in locking and crash recovery.

Real Postgres (the runtime role, RLS armed) and the app's Qdrant Edge index.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.db.pool import tenant_transaction
from app.retrieval import repository
from app.retrieval.reconcile import reconcile
from app.retrieval.schemas import DocumentIn
from app.retrieval.service import DocumentService
from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.spaces import VectorSpaces
from tests.conftest import AuthHeaders

Client = AsyncTestClient[Litestar]
WRITER = (Role.SEARCH, Role.INGEST)


async def texts(client: Client, headers: dict[str, str]) -> list[str]:
    response = await client.post("/v1/search", json={"query": "capybara"}, headers=headers)
    assert response.status_code == 200, response.text
    return sorted(hit["text"] for hit in response.json()["results"])


async def test_reconcile_waits_for_an_ingest_of_the_same_id_under_another_key(
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    tenant_pair: tuple[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Reconcile locks a pending key's id: the lock an ingest of any document of that id holds.

    A real `DocumentService` ingest, paused inside its transaction (it holds the id's lock then)
    by a wrapper around its index's `upsert`; the real reconcile lock runs beside it.
    """
    tenant, _ = tenant_pair
    scope = TenantScope(tenant_id=tenant, subject="test", roles=frozenset({Role.INGEST}))
    index = EdgeIndex.open(tmp_path / "qdrant")
    upsert = index.upsert
    ingest_holds, release = asyncio.Event(), asyncio.Event()

    async def paused_upsert(**kwargs: Any) -> None:
        ingest_holds.set()
        await release.wait()
        await upsert(**kwargs)

    index.upsert = paused_upsert  # type: ignore[method-assign]
    service = DocumentService(
        pool=app_pool, index=index, limits=settings.limits, chunking=settings.chunking
    )
    memo = service.prepare([DocumentIn(id="memo", title="Memo", text="capybara memo")])

    async def settle() -> None:
        async with tenant_transaction(app_pool, scope=scope) as connection:
            await repository.lock_committed(connection, ["memo~0011223344556677"])

    ingest = asyncio.create_task(service.ingest(scope=scope, documents=memo))
    try:
        async with asyncio.timeout(10):
            await ingest_holds.wait()
            waiter = asyncio.create_task(settle())
            while not await owner_pool.fetchval(  # noqa: ASYNC110 - polling Postgres's lock table
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ):
                await asyncio.sleep(0.01)
        assert not waiter.done()
    finally:
        release.set()
        await asyncio.wait_for(ingest, timeout=10)
        await index.close()
    await asyncio.wait_for(waiter, timeout=10)


async def test_a_crash_before_publish_of_a_keyed_document_is_published_by_reconcile(
    client: Client,
    app: Litestar,
    app_pool: asyncpg.Pool,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: `publish` raises (a stand-in for a process killed after the commit)."""
    tenant, _ = tenant_pair
    hr = auth(tenant, user="carol", roles=WRITER, groups=("hr",))
    outsider = auth(tenant, user="mallory", roles=WRITER)
    secret = {"id": "pay", "title": "Pay", "text": "capybara pay", "acl": {"groups": ["hr"]}}
    response = await client.post("/v1/documents", json={"documents": [secret]}, headers=hr)
    assert response.status_code == 201, response.text
    index = app.state.resources.index

    async def crash(**_: Any) -> None:
        raise ConnectionError("killed before publish")

    monkeypatch.setattr(index, "publish", crash)
    mine = {"id": "pay", "title": "Pay", "text": "capybara rumour"}
    response = await client.post("/v1/documents", json={"documents": [mine]}, headers=outsider)
    assert response.status_code == 500
    monkeypatch.undo()
    assert await texts(client, outsider) == []  # committed, still pending

    report = await reconcile(
        app_pool, VectorSpaces(index, None, search_threads=1), tenant_id=tenant
    )

    assert (report.published, report.discarded) == (1, 0)
    assert await texts(client, outsider) == ["capybara rumour"]
    assert await texts(client, hr) == ["capybara pay", "capybara rumour"]
