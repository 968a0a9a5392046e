"""`bulkhead tenants offboard` in Qdrant server mode: collection, points, key and record go.

Real Postgres and a real OpenBao holding the cluster key (a platform secret) and the tenants'
JWTs; Qdrant is qdrant-client's local mode on disk (no server binary exists here). A dedicated
tenant and a shared tenant are offboarded in turn next to a shared bystander, whose points,
key and revocation record must survive both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from app.config import VaultSettings
from app.secrets.backend import SecretNotFound
from app.secrets.values import SecretRef
from app.secrets.vault import VaultSecretsBackend
from app.vectors.qdrant_clients import SharedClient
from app.vectors.qdrant_keys import jwt_ref
from app.vectors.qdrant_server import CollectionNames, Isolation, QdrantServerIndex
from tests.integration.index_harness import chunk, scope
from tests.integration.test_qdrant_cli import (  # noqa: F401 - fixture
    CLUSTER_KEY,
    _cli,
    _manifest,
    _scope,
    server_env,
)
from tests.servers import OpenBao

NAMES = CollectionNames()


async def _key_records(client: AsyncQdrantClient) -> dict[str, int]:
    points, _ = await client.scroll(NAMES.keys, limit=1000)
    counts: dict[str, int] = {}
    for point in points:
        assert point.payload is not None
        tenant = point.payload["tenant_id"]
        counts[tenant] = counts.get(tenant, 0) + 1
    return counts


async def test_offboard_drops_collection_points_key_and_record_of_that_tenant_only(
    server_env: dict[str, str],  # noqa: F811 - fixture
    tmp_path: Path,
    openbao: OpenBao,
) -> None:
    secrets = VaultSecretsBackend(VaultSettings(addr=openbao.addr, token=openbao.root_token))
    platform_ref = SecretRef(tenant_id=None, name="qdrant-api-key")
    await secrets.put(
        platform_ref,
        CLUSTER_KEY,
        scope=_scope("platform"),
        platform_refs=frozenset({str(platform_ref)}),
    )
    dedicated, dedicated_path = _manifest(tmp_path, "dedicated")
    shared, shared_path = _manifest(tmp_path, "shared")
    bystander, bystander_path = _manifest(tmp_path, "shared")
    applied = await _cli(
        ["tenants", "apply", str(dedicated_path), str(shared_path), str(bystander_path)]
    )
    assert applied.exit_code == 0, applied.output
    isolation: dict[str, Isolation] = {
        dedicated: "dedicated",
        shared: "shared",
        bystander: "shared",
    }

    client = AsyncQdrantClient(path=server_env["BULKHEAD_VECTORS__QDRANT__PATH"])
    try:
        index = QdrantServerIndex(
            SharedClient(client), isolation_of=lambda t: isolation[t], names=NAMES
        )
        for tenant in (dedicated, shared, bystander):
            await index.upsert(
                scope=scope(tenant),
                chunks=[
                    chunk(tenant, "doc", "words", index=0),
                    chunk(tenant, "hidden", "words", index=1, acl=("board",)),
                ],
            )
        # A leftover of the dedicated tenant in the shared collection (say, from before it
        # moved to its own): offboarding sweeps both places, whatever the manifest says now.
        isolation[dedicated] = "shared"
        await index.upsert(scope=scope(dedicated), chunks=[chunk(dedicated, "old", "words")])
        isolation[dedicated] = "dedicated"
        assert await client.collection_exists(NAMES.dedicated(dedicated))
        assert (await _key_records(client)).keys() == {dedicated, shared, bystander}
    finally:
        await client.close()

    first = await _cli(
        ["tenants", "offboard", dedicated, "--yes", "--export", str(tmp_path / "export-d")]
    )
    second = await _cli(
        ["tenants", "offboard", shared, "--yes", "--export", str(tmp_path / "export-s")]
    )

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert (
        f"deleted 3 vectors; dropped collection {NAMES.dedicated(dedicated)};"
        " Qdrant key revoked" in first.output
    )
    assert "deleted 2 vectors; Qdrant key revoked" in second.output
    client = AsyncQdrantClient(path=server_env["BULKHEAD_VECTORS__QDRANT__PATH"])
    try:
        assert not await client.collection_exists(NAMES.dedicated(dedicated))
        index = QdrantServerIndex(
            SharedClient(client), isolation_of=lambda _: "shared", names=NAMES
        )
        for gone in (dedicated, shared):
            assert await index.tenant_points(scope=scope(gone)) == 0
        assert await index.tenant_points(scope=scope(bystander)) == 2
        assert (await client.count(NAMES.shared)).count == 2
        assert await _key_records(client) == {bystander: 1}
    finally:
        await client.close()
    for gone in (dedicated, shared):
        with pytest.raises(SecretNotFound):
            await secrets.get(jwt_ref(gone), scope=_scope(gone))
    assert await secrets.get(jwt_ref(bystander), scope=_scope(bystander))
    await secrets.close()
