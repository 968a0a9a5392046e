"""Onboarding mints, stores, re-mints and revokes a tenant's scoped Qdrant key.

Real parts: Postgres with the local secrets backend, qdrant-client's local mode for the
collections and revocation records. Local mode ignores API keys, so whether a Qdrant server
would refuse a revoked or out-of-scope key cannot run here; these tests check what Bulkhead
controls: the claims, where the key is stored, the record its `value_exists` names, and that
the request path's client is built from the stored key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from app.db.pool import connect
from app.lifecycle.apply import apply_manifest
from app.secrets.cache import SecretCache
from app.secrets.local import LocalSecretsBackend
from app.secrets.values import SecretValue
from app.tenancy.manifest import RetrievalSpec, TenantManifest
from app.tenancy.scope import Role, TenantScope
from app.vectors.qdrant_clients import ScopedKeyClients, VectorKeyMissing
from app.vectors.qdrant_keys import TenantKeyMinter, jwt_ref, read_claims
from app.vectors.qdrant_server import CollectionNames
from tests.conftest import TenantFactory

CLUSTER_KEY = SecretValue("cluster-key-for-tests-0123456789abcdef")
DAY = 24 * 3600


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def admin() -> AsyncIterator[AsyncQdrantClient]:
    client = AsyncQdrantClient(location=":memory:")
    yield client
    await client.close()


@pytest.fixture
def secrets(app_pool: asyncpg.Pool, kek: bytes) -> LocalSecretsBackend:
    return LocalSecretsBackend(app_pool, kek)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def minter(admin: AsyncQdrantClient, secrets: LocalSecretsBackend, clock: Clock) -> TenantKeyMinter:
    return TenantKeyMinter(
        admin=admin,
        cluster_key=CLUSTER_KEY,
        secrets=secrets,
        names=CollectionNames("bk"),
        ttl_seconds=30 * DAY,
        refresh_before_seconds=7 * DAY,
        clock=clock,
    )


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="svc", roles=frozenset({Role.SEARCH}))


async def _stored_claims(secrets: LocalSecretsBackend, tenant_id: str) -> dict[str, object]:
    token = await secrets.get(jwt_ref(tenant_id), scope=_scope(tenant_id))
    claims = read_claims(token, CLUSTER_KEY)
    assert claims is not None
    return claims


async def _record_exists(admin: AsyncQdrantClient, claims: dict[str, object]) -> bool:
    value_exists = claims["value_exists"]
    assert isinstance(value_exists, dict)
    matches = {m["key"]: m["value"] for m in value_exists["matches"]}
    points, _ = await admin.scroll(value_exists["collection"], limit=100)
    return any(all(p.payload and p.payload.get(k) == v for k, v in matches.items()) for p in points)


async def test_onboarding_mints_and_stores_a_key_scoped_to_the_tenants_collection(
    make_tenant: TenantFactory,
    database_url: str,
    kek: bytes,
    minter: TenantKeyMinter,
    secrets: LocalSecretsBackend,
    admin: AsyncQdrantClient,
    clock: Clock,
) -> None:
    tenant_id = await make_tenant("qk", retrieval=RetrievalSpec(isolation="dedicated"))
    manifest = TenantManifest(
        id=tenant_id, name="x", retrieval=RetrievalSpec(isolation="dedicated")
    )
    connection = await connect(database_url)
    try:
        result = await apply_manifest(connection, manifest, kek=kek, vectors=minter)
        again = await apply_manifest(connection, manifest, kek=kek, vectors=minter)
    finally:
        await connection.close()

    assert "vector key" in result.changed
    assert "vector key" not in again.changed
    claims = await _stored_claims(secrets, tenant_id)
    assert claims["access"] == [{"collection": f"bk_t_{tenant_id}", "access": "prw"}]
    assert claims["exp"] == int(clock.now) + 30 * DAY
    assert await admin.collection_exists(f"bk_t_{tenant_id}")
    assert await _record_exists(admin, claims)
    versions = dict(await secrets.list(scope=_scope(tenant_id)))
    assert versions[jwt_ref(tenant_id)] == 1


async def test_key_is_reminted_inside_the_refresh_window_and_old_records_expire(
    make_tenant: TenantFactory,
    minter: TenantKeyMinter,
    secrets: LocalSecretsBackend,
    admin: AsyncQdrantClient,
    clock: Clock,
) -> None:
    tenant_id = await make_tenant("qk")
    assert (await minter.ensure(tenant_id, "shared")).minted
    first = await _stored_claims(secrets, tenant_id)

    clock.now += 22 * DAY  # 8 days left: outside the 7-day window
    assert not (await minter.ensure(tenant_id, "shared")).minted
    clock.now += 2 * DAY  # 6 days left
    outcome = await minter.ensure(tenant_id, "shared")

    assert (outcome.minted, outcome.reason, outcome.version) == (True, "expiring", 2)
    second = await _stored_claims(secrets, tenant_id)
    assert second["exp"] == int(clock.now) + 30 * DAY
    assert await _record_exists(admin, first)  # still valid until its own exp
    clock.now += 7 * DAY  # first key is past exp
    await minter.ensure(tenant_id, "dedicated")  # isolation change: new collection, new key
    third = await _stored_claims(secrets, tenant_id)
    assert third["access"] == [{"collection": f"bk_t_{tenant_id}", "access": "prw"}]
    assert not await _record_exists(admin, first)
    assert await _record_exists(admin, second)
    assert await _record_exists(admin, third)


async def test_revocation_deletes_the_record_its_value_exists_claim_names(
    make_tenant: TenantFactory,
    minter: TenantKeyMinter,
    secrets: LocalSecretsBackend,
    admin: AsyncQdrantClient,
) -> None:
    tenant_id, other = await make_tenant("qk"), await make_tenant("qk")
    await minter.ensure(tenant_id, "shared")
    await minter.ensure(other, "shared")
    claims = await _stored_claims(secrets, tenant_id)

    await minter.revoke(tenant_id)

    assert not await _record_exists(admin, claims)
    assert await _record_exists(admin, await _stored_claims(secrets, other))
    outcome = await minter.ensure(tenant_id, "shared")
    assert (outcome.minted, outcome.reason) == (True, "revoked")


class RecordingQdrant:
    """A loopback HTTP endpoint answering `GET /collections` and recording the api-key header."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.refused: set[str] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = ""
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "api-key":
                key = value.strip()
                self.keys.append(key)
        if key in self.refused:
            status = b"403 Forbidden"
            body = json.dumps({"status": {"error": "Forbidden"}, "time": 0}).encode()
        else:
            status = b"200 OK"
            body = json.dumps({"result": {"collections": []}, "status": "ok", "time": 0}).encode()
        writer.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"connection: close\r\n" + f"content-length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# Plain HTTP on loopback only; production URLs are https.
@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
async def test_request_path_client_sends_the_tenants_stored_key(
    make_tenant: TenantFactory, minter: TenantKeyMinter, secrets: LocalSecretsBackend
) -> None:
    tenant_id, unprovisioned = await make_tenant("qk"), await make_tenant("qk")
    await minter.ensure(tenant_id, "shared")
    stored = await secrets.get(jwt_ref(tenant_id), scope=_scope(tenant_id))
    server = RecordingQdrant()
    url = await server.start()
    clients = ScopedKeyClients(
        url=url,
        secrets=SecretCache(secrets, ttl_seconds=60),
        monitor=AsyncQdrantClient(location=":memory:"),
    )
    try:
        client = await clients.for_scope(_scope(tenant_id))
        await client.get_collections()
        assert server.keys == [stored.reveal()]
        assert CLUSTER_KEY.reveal() not in server.keys
        assert await clients.for_scope(_scope(tenant_id)) is client
        with pytest.raises(VectorKeyMissing) as info:
            await clients.for_scope(_scope(unprovisioned))
        assert info.value.status == 503
    finally:
        await clients.close()
        await server.stop()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
async def test_a_refused_key_is_refetched_once_and_the_call_retried(
    make_tenant: TenantFactory, minter: TenantKeyMinter, secrets: LocalSecretsBackend
) -> None:
    tenant_id = await make_tenant("qk")
    await minter.ensure(tenant_id, "shared")
    old = (await secrets.get(jwt_ref(tenant_id), scope=_scope(tenant_id))).reveal()
    server = RecordingQdrant()
    url = await server.start()
    clients = ScopedKeyClients(
        url=url,
        secrets=SecretCache(secrets, ttl_seconds=3600),
        monitor=AsyncQdrantClient(location=":memory:"),
    )
    try:
        await clients.run(_scope(tenant_id), lambda c: c.get_collections())  # caches the key
        await minter.revoke(tenant_id)
        await minter.ensure(tenant_id, "shared")  # a new key, not yet in this replica's cache
        new = (await secrets.get(jwt_ref(tenant_id), scope=_scope(tenant_id))).reveal()
        server.refused.add(old)

        await clients.run(_scope(tenant_id), lambda c: c.get_collections())

        assert server.keys == [old, old, new]
        # When the store still holds the refused key, the refusal is the answer: no loop.
        server.refused.add(new)
        with pytest.raises(UnexpectedResponse) as info:
            await clients.run(_scope(tenant_id), lambda c: c.get_collections())
        assert info.value.status_code == 403
        assert server.keys[3:] == [new]
    finally:
        await clients.close()
        await server.stop()
