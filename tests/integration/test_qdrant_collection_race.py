"""Processes starting together against one Qdrant server each make the collections: no crash.

The workers of `bulkhead serve --workers N` (and replicas) start at the same moment; each finds
the shared and keys collections missing and creates them, and the server answers the later
creator 409 "already exists". That answer must mean "done", not a failed start-up (it once
stopped every worker). Through the Qdrant REST facade (tests/qdrant_facade.py), which answers
409 the way Qdrant >= 1.8 does, with qdrant-client's real REST transport.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from app.vectors.qdrant_collections import (
    CollectionNames,
    create_collection_once,
    ensure_collection,
)
from app.vectors.qdrant_keys import TenantKeyMinter


async def test_creating_an_existing_collection_reports_it_was_there(qdrant_facade: str) -> None:
    name = f"race_{uuid.uuid4().hex[:10]}"
    first, second = AsyncQdrantClient(url=qdrant_facade), AsyncQdrantClient(url=qdrant_facade)
    try:
        assert await create_collection_once(first, name, vectors_config={}) is True
        with pytest.raises(UnexpectedResponse) as refused:
            await second.create_collection(name, vectors_config={})
        assert refused.value.status_code == 409

        assert await create_collection_once(second, name, vectors_config={}) is False
        # Any other refusal still fails.
        with pytest.raises(UnexpectedResponse):
            await create_collection_once(second, "bad/name", vectors_config={})
    finally:
        await first.delete_collection(name)
        await first.close()
        await second.close()


async def test_two_starting_processes_both_ensure_the_platform_collections(
    qdrant_facade: str,
) -> None:
    names = CollectionNames(f"race{uuid.uuid4().hex[:10]}")
    clients = [AsyncQdrantClient(url=qdrant_facade) for _ in range(3)]
    minters = [
        TenantKeyMinter(
            admin=client,
            cluster_key=None,
            secrets=None,  # type: ignore[arg-type] - no key is minted without a cluster key
            names=names,
            ttl_seconds=3600,
            refresh_before_seconds=60,
        )
        for client in clients
    ]
    try:
        await asyncio.gather(*(minter.ensure_platform_collections() for minter in minters))
        created = await asyncio.gather(
            *(ensure_collection(client, names.dedicated("acme")) for client in clients)
        )
        assert sorted(created) == [False, False, True]
        for name in (names.shared, names.keys, names.dedicated("acme")):
            assert await clients[0].collection_exists(name)
    finally:
        for name in (names.shared, names.keys, names.dedicated("acme")):
            await clients[0].delete_collection(name)
        for client in clients:
            await client.close()
