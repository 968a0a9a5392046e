"""Service API keys: shown once, stored peppered, scoped, expiring, rotating, revocable, fenced."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.testing import transport as litestar_transport

from app.db.urls import with_user
from app.identity.api_keys import ApiKeyHasher, derive_pepper
from app.identity.key_store import ApiKeyStore
from app.identity.network import ClientAddressResolver
from app.problems import Unauthenticated
from app.tenancy.scope import Role
from tests.conftest import AuthHeaders, counter_value

Client = AsyncTestClient[Litestar]
ADMIN = (Role.ADMIN,)
FAILURES = "bulkhead.auth.failures"


@pytest.fixture
async def tenant(tenant_pair: tuple[str, str]) -> str:
    return tenant_pair[0]


async def create_key(
    client: Client, auth: AuthHeaders, tenant: str, **fields: Any
) -> dict[str, Any]:
    body = {"name": "ci-bot", "scopes": ["search"], **fields}
    response = await client.post("/v1/admin/api-keys", json=body, headers=auth(tenant, roles=ADMIN))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def search(client: Any, key: str, **headers: str) -> Any:
    return await client.post(
        "/v1/search", json={"query": "anything"}, headers={**bearer(key), **headers}
    )


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


ClientFrom = Callable[[str], httpx.AsyncClient]


class _PeerTransport(litestar_transport.TestClientTransport):  # type: ignore[type-arg]
    """Litestar's test transport with a chosen socket peer (it hard-codes "testclient")."""

    def __init__(self, client: Client, peer: str) -> None:
        super().__init__(client=client)
        self.peer = peer

    def parse_request(self, request: httpx.Request) -> dict[str, Any]:
        scope = super().parse_request(request)
        scope["client"] = (self.peer, 40000)
        return scope

    async def aclose(self) -> None:
        """Nothing to close: the session client owns the portal."""


@pytest.fixture
async def client_from(client: Client) -> AsyncIterator[ClientFrom]:
    """Clients whose socket peer is a given address, served by the session app and loop."""
    opened: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        made = httpx.AsyncClient(
            transport=_PeerTransport(client, address), base_url="http://testserver.local"
        )
        opened.append(made)
        return made

    yield make
    for made in opened:
        await made.aclose()


async def test_key_is_shown_once_and_stored_only_as_peppered_hmac(
    client: Client, auth: AuthHeaders, tenant: str, owner_pool: asyncpg.Pool
) -> None:
    created = await create_key(client, auth, tenant)
    key = created["key"]
    key_id = created["api_key"]["id"]
    assert key.startswith(f"bk_{key_id}_")
    secret = key.split("_", 2)[2]
    assert len(secret) >= 43  # 32 random bytes, base64url
    listing = await client.get("/v1/admin/api-keys", headers=auth(tenant, roles=ADMIN))
    assert listing.status_code == 200
    assert key not in listing.text
    assert secret not in listing.text
    assert [k["id"] for k in listing.json()["api_keys"]] == [key_id]
    stored = await owner_pool.fetchval("SELECT secret_hmac FROM api_keys WHERE id = $1", key_id)
    assert secret.encode() not in stored
    assert bytes(stored) != hashlib.sha256(secret.encode()).digest()  # peppered, not a bare hash
    assert len(stored) == 32
    assert bytes(stored) != hmac.new(b"", secret.encode(), hashlib.sha256).digest()


async def test_key_authenticates_with_its_scopes_only(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    key = (await create_key(client, auth, tenant, scopes=["search"]))["key"]
    assert (await search(client, key)).status_code == 200
    chat = await client.post("/v1/chat", json={"message": "hi"}, headers=bearer(key))
    assert_problem(chat, 403, "forbidden")
    admin = await client.get("/v1/admin/api-keys", headers=bearer(key))
    assert_problem(admin, 403, "forbidden")


async def test_admin_endpoints_need_the_admin_role(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    response = await client.post(
        "/v1/admin/api-keys", json={"name": "x", "scopes": ["search"]}, headers=auth(tenant)
    )
    assert_problem(response, 403, "forbidden")


async def test_invalid_key_requests_are_refused(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    for body in (
        {"name": "x", "scopes": ["root"]},
        {"name": "x", "scopes": []},
        {"name": "", "scopes": ["search"]},
        {"name": "x", "scopes": ["search"], "allowed_cidrs": ["not-a-net"]},
        {"name": "x", "scopes": ["search"], "expires_at": "2001-01-01T00:00:00Z"},
        {"name": "x", "scopes": ["search"], "tenant_id": "other"},
    ):
        response = await client.post(
            "/v1/admin/api-keys", json=body, headers=auth(tenant, roles=ADMIN)
        )
        assert_problem(response, 422, "validation_error")


async def test_revoked_key_is_refused_and_counted(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    created = await create_key(client, auth, tenant)
    before = counter_value(FAILURES, tenant=tenant, reason="revoked")
    revoke = await client.delete(
        f"/v1/admin/api-keys/{created['api_key']['id']}", headers=auth(tenant, roles=ADMIN)
    )
    assert revoke.status_code == 204
    assert_problem(await search(client, created["key"]), 401, "unauthenticated")
    assert counter_value(FAILURES, tenant=tenant, reason="revoked") == before + 1


async def test_expired_key_is_refused(
    client: Client, auth: AuthHeaders, tenant: str, owner_pool: asyncpg.Pool
) -> None:
    # Seconds of margin, so a busy machine still searches before the expiry.
    expires = datetime.now(UTC) + timedelta(seconds=3)
    created = await create_key(client, auth, tenant, expires_at=expires.isoformat())
    assert (await search(client, created["key"])).status_code == 200
    await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.05)
    assert_problem(await search(client, created["key"]), 401, "unauthenticated")


async def test_rotation_keeps_both_keys_during_grace_then_only_the_new_one(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    old = await create_key(client, auth, tenant)
    rotated = await client.post(
        f"/v1/admin/api-keys/{old['api_key']['id']}/rotate",
        json={"grace_seconds": 3},
        headers=auth(tenant, roles=ADMIN),
    )
    grace_ends = datetime.now(UTC) + timedelta(seconds=3)  # at the latest
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["previous"]["replaced_by"] == new["api_key"]["id"]
    assert new["api_key"]["scopes"] == ["search"]
    assert (await search(client, old["key"])).status_code == 200
    assert (await search(client, new["key"])).status_code == 200
    await asyncio.sleep((grace_ends - datetime.now(UTC)).total_seconds() + 0.05)
    assert_problem(await search(client, old["key"]), 401, "unauthenticated")
    assert (await search(client, new["key"])).status_code == 200
    again = await client.post(
        f"/v1/admin/api-keys/{old['api_key']['id']}/rotate",
        json={"grace_seconds": 0},
        headers=auth(tenant, roles=ADMIN),
    )
    assert_problem(again, 404, "not_found")


async def test_another_tenants_admin_cannot_see_rotate_or_revoke_a_key(
    client: Client, auth: AuthHeaders, tenant_pair: tuple[str, str]
) -> None:
    victim, attacker = tenant_pair
    created = await create_key(client, auth, victim)
    key_id = created["api_key"]["id"]
    listing = await client.get("/v1/admin/api-keys", headers=auth(attacker, roles=ADMIN))
    assert listing.json() == {"api_keys": []}
    revoke = await client.delete(
        f"/v1/admin/api-keys/{key_id}", headers=auth(attacker, roles=ADMIN)
    )
    assert_problem(revoke, 404, "not_found")
    rotate = await client.post(
        f"/v1/admin/api-keys/{key_id}/rotate", json={}, headers=auth(attacker, roles=ADMIN)
    )
    assert_problem(rotate, 404, "not_found")
    assert (await search(client, created["key"])).status_code == 200


async def test_forged_or_altered_keys_are_refused(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    key = (await create_key(client, auth, tenant))["key"]
    prefix, key_id, secret = key.split("_", 2)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    for forged in (
        f"{prefix}_{'f' * 16}_{secret}",
        f"{prefix}_{'f' * 16}_{secret}",  # again: remembered as missing, still refused
        f"{prefix}_{key_id}_{flipped}",
        f"{prefix}_{'0' * 16}_{secret}",
        f"{prefix}_{key_id}",
        f"{prefix}_{key_id}_{secret}x",
        "bk_",
    ):
        assert_problem(await search(client, forged), 401, "unauthenticated")


async def test_last_used_is_written_in_batches(
    client: Client,
    auth: AuthHeaders,
    tenant: str,
    app_pool: asyncpg.Pool,
    kek: bytes,
    owner_pool: asyncpg.Pool,
) -> None:
    """A store of its own (same pool role and pepper as the app) so the test controls flushes."""
    created = await create_key(client, auth, tenant)
    key_id = created["api_key"]["id"]
    store = ApiKeyStore(
        app_pool, ApiKeyHasher(derive_pepper(kek)), cache_seconds=60, flush_seconds=3600
    )
    for _ in range(5):
        record = await store.verify(created["key"], client=None)
        assert record.tenant_id == tenant
    last_used = "SELECT last_used_at FROM api_keys WHERE id = $1"
    assert await owner_pool.fetchval(last_used, key_id) is None  # not a write per request
    await store.flush_last_used()
    assert await owner_pool.fetchval(last_used, key_id) is not None


async def test_key_from_a_disallowed_cidr_is_refused(
    client: Client, auth: AuthHeaders, tenant: str, client_from: ClientFrom
) -> None:
    key = (await create_key(client, auth, tenant, allowed_cidrs=["10.0.0.0/8"]))["key"]
    inside, outside = client_from("10.1.2.3"), client_from("203.0.113.7")
    assert (await search(inside, key)).status_code == 200
    before = counter_value(FAILURES, tenant=tenant, reason="key_cidr")
    assert_problem(await search(outside, key), 403, "forbidden")
    assert counter_value(FAILURES, tenant=tenant, reason="key_cidr") == before + 1


async def test_spoofed_forwarded_for_without_a_trusted_proxy_is_ignored(
    client: Client, auth: AuthHeaders, tenant: str, client_from: ClientFrom
) -> None:
    key = (await create_key(client, auth, tenant, allowed_cidrs=["10.0.0.0/8"]))["key"]
    outside = client_from("203.0.113.7")
    spoofed = await search(outside, key, **{"X-Forwarded-For": "10.1.2.3"})
    assert_problem(spoofed, 403, "forbidden")


async def test_forwarded_for_is_read_only_behind_a_trusted_proxy(
    client: Client,
    auth: AuthHeaders,
    tenant: str,
    client_from: ClientFrom,
    app: Litestar,
    owner_pool: asyncpg.Pool,
) -> None:
    key = (await create_key(client, auth, tenant, allowed_cidrs=["10.0.0.0/8"]))["key"]
    proxy = client_from("192.0.2.10")
    original = app.state.client_addresses
    app.state.client_addresses = ClientAddressResolver(["192.0.2.0/24"])
    try:
        assert (await search(proxy, key, **{"X-Forwarded-For": "10.1.2.3"})).status_code == 200
        # The client can only prepend; the proxy appends the real peer on the right.
        spoof = {"X-Forwarded-For": "10.1.2.3, 203.0.113.9"}
        assert_problem(await search(proxy, key, **spoof), 403, "forbidden")
    finally:
        app.state.client_addresses = original
    # The audit trail records the client, not the proxy.
    addresses: list[str] = []
    for _ in range(100):
        addresses = [
            str(row["source_ip"])
            for row in await owner_pool.fetch(
                "SELECT source_ip FROM audit_events WHERE tenant_id = $1 AND status = 200",
                tenant,
            )
        ]
        if addresses:
            break
        await asyncio.sleep(0.05)
    assert addresses == ["10.1.2.3"]


async def test_tenant_allowed_cidrs_apply_to_every_credential(
    client: Client,
    auth: AuthHeaders,
    make_tenant: Any,
    app: Litestar,
    client_from: ClientFrom,
) -> None:
    from app.tenancy.manifest import NetworkSpec
    from tests.conftest import wait_for_tenant

    fenced = await make_tenant("net", network=NetworkSpec(allowed_cidrs=("198.51.100.0/24",)))
    await wait_for_tenant(app, fenced)
    inside, outside = client_from("198.51.100.20"), client_from("203.0.113.7")
    ok = await inside.post("/v1/search", json={"query": "x"}, headers=auth(fenced))
    assert ok.status_code == 200
    refused = await outside.post("/v1/search", json={"query": "x"}, headers=auth(fenced))
    assert_problem(refused, 403, "forbidden")
    assert counter_value(FAILURES, tenant=fenced, reason="tenant_cidr") == 1


async def test_auth_failures_are_logged_with_a_reason_and_never_the_token(
    client: Client, auth: AuthHeaders, tenant: str, owner_pool: asyncpg.Pool
) -> None:
    created = await create_key(client, auth, tenant)
    key_id = created["api_key"]["id"]
    wrong = f"bk_{key_id}_{'Z' * 43}"
    assert_problem(await search(client, wrong), 401, "unauthenticated")
    row = None
    for _ in range(100):
        row = await owner_pool.fetchrow(
            "SELECT * FROM auth_failures WHERE credential_id = $1", f"apikey:{key_id}"
        )
        if row is not None:
            break
        await asyncio.sleep(0.05)
    assert row is not None
    assert row["reason"] == "bad_secret"
    assert row["tenant_id"] == tenant
    assert row["route"] == "/v1/search"
    assert "Z" * 43 not in repr(dict(row))


async def test_key_store_survives_losing_its_listener(
    client: Client,
    auth: AuthHeaders,
    tenant: str,
    app_pool: asyncpg.Pool,
    owner_pool: asyncpg.Pool,
    kek: bytes,
    database_url: str,
) -> None:
    """A dropped LISTEN connection empties the cache and reconnects; revocation still lands."""
    store = ApiKeyStore(
        app_pool, ApiKeyHasher(derive_pepper(kek)), cache_seconds=3600, flush_seconds=3600
    )
    await store.start(with_user(database_url, "bulkhead_app"))
    try:
        created = await create_key(client, auth, tenant)
        await store.verify(created["key"], client=None)
        listener = store._listener
        assert listener is not None
        await owner_pool.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
        async with asyncio.timeout(5):
            while store._listener is None or store._listener is listener:  # noqa: ASYNC110 - polled state
                await asyncio.sleep(0.02)
        await store.verify(created["key"], client=None)
        await client.delete(
            f"/v1/admin/api-keys/{created['api_key']['id']}", headers=auth(tenant, roles=ADMIN)
        )
        async with asyncio.timeout(1):
            while True:
                try:
                    await store.verify(created["key"], client=None)
                except Unauthenticated:
                    break
                await asyncio.sleep(0.01)
    finally:
        await store.close()
