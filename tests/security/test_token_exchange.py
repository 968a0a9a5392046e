"""POST /v1/auth/token: an API key buys a short-lived EdDSA JWT that Bulkhead alone can sign."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.identity.service_tokens import KEY_CLAIM, TENANT_CLAIM, ServiceTokenIssuer
from app.problems import Unauthenticated
from app.tenancy.scope import Role
from tests.conftest import AuthHeaders, counter_value
from tests.security.test_api_keys import assert_problem, bearer, create_key, search

Client = AsyncTestClient[Litestar]
ADMIN = (Role.ADMIN,)


@pytest.fixture
async def tenant(tenant_pair: tuple[str, str]) -> str:
    return tenant_pair[0]


async def exchange(client: Client, credential: str) -> Any:
    return await client.post("/v1/auth/token", headers=bearer(credential))


async def test_api_key_is_exchanged_for_a_short_lived_eddsa_jwt(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    created = await create_key(client, auth, tenant, scopes=["search", "chat"])
    response = await exchange(client, created["key"])
    assert response.status_code == 200, response.text
    assert "no-store" in response.headers["cache-control"]
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 900
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert header["kid"] in [key["kid"] for key in jwks["keys"]]
    assert all("d" not in key for key in jwks["keys"])
    public = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(token, public, algorithms=["EdDSA"], audience="bulkhead")
    assert claims["exp"] - claims["iat"] <= 900
    assert claims[TENANT_CLAIM] == tenant
    assert claims[KEY_CLAIM] == created["api_key"]["id"]
    assert sorted(claims["roles"]) == ["chat", "search"]
    assert (await search(client, token)).status_code == 200


async def test_only_an_api_key_can_be_exchanged(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    created = await create_key(client, auth, tenant)
    token = (await exchange(client, created["key"])).json()["access_token"]
    assert_problem(await exchange(client, token), 403, "forbidden")
    user = await client.post("/v1/auth/token", headers=auth(tenant))
    assert_problem(user, 403, "forbidden")
    assert_problem(await client.post("/v1/auth/token"), 401, "unauthenticated")


async def test_exchanged_token_dies_with_its_revoked_key(
    client: Client, auth: AuthHeaders, tenant: str
) -> None:
    created = await create_key(client, auth, tenant)
    token = (await exchange(client, created["key"])).json()["access_token"]
    assert (await search(client, token)).status_code == 200
    await client.delete(
        f"/v1/admin/api-keys/{created['api_key']['id']}", headers=auth(tenant, roles=ADMIN)
    )
    before = counter_value("bulkhead.auth.failures", tenant=tenant, reason="revoked")
    assert_problem(await search(client, token), 401, "unauthenticated")
    assert counter_value("bulkhead.auth.failures", tenant=tenant, reason="revoked") == before + 1


async def test_forged_service_tokens_are_refused(
    client: Client, auth: AuthHeaders, tenant_pair: tuple[str, str]
) -> None:
    mine, theirs = tenant_pair
    created = await create_key(client, auth, mine)
    token = (await exchange(client, created["key"])).json()["access_token"]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    attacker_key = Ed25519PrivateKey.generate()
    forgeries = [
        # Same kid, attacker's key, victim's tenant.
        jwt.encode({**claims, TENANT_CLAIM: theirs}, attacker_key, "EdDSA", {"kid": header["kid"]}),
        # Unknown kid.
        jwt.encode(claims, attacker_key, "EdDSA", {"kid": "bk-0000000000000000"}),
        # HS256 with the public JWK as the secret.
        jwt.encode(claims, header["kid"].encode() * 4, "HS256", {"kid": header["kid"]}),
    ]
    head, _, signature = token.split(".")
    tampered = jwt.utils.base64url_encode(
        json.dumps({**claims, TENANT_CLAIM: theirs}).encode()
    ).decode()
    forgeries.append(f"{head}.{tampered}.{signature}")
    # A real signature would not help either: the lifetime is capped at the exchange TTL.
    assert claims["exp"] - now <= 900
    for forged in forgeries:
        assert_problem(await search(client, forged), 401, "unauthenticated")


def test_signing_key_rotation_keeps_old_tokens_valid_and_published(tmp_path: Path) -> None:
    old_path, new_path = tmp_path / "old.pem", tmp_path / "new.pem"
    common: dict[str, Any] = {"issuer": "urn:bulkhead:service", "audience": "bulkhead"}
    old = ServiceTokenIssuer.from_files(old_path, [], create=True, ttl_seconds=600, **common)
    assert old is not None
    token = old.mint(tenant_id="t1", key_id="0" * 16, roles=["search"])
    rotated = ServiceTokenIssuer.from_files(
        new_path, [old_path], create=True, ttl_seconds=600, **common
    )
    assert rotated is not None
    assert rotated.kid != old.kid
    assert {k["kid"] for k in rotated.jwks()["keys"]} == {old.kid, rotated.kid}
    claims = rotated.verify(token, jwt.get_unverified_header(token))
    assert claims[TENANT_CLAIM] == "t1"
    retired = ServiceTokenIssuer.from_files(new_path, [], create=False, ttl_seconds=600, **common)
    assert retired is not None
    with pytest.raises(Unauthenticated) as refused:
        retired.verify(token, jwt.get_unverified_header(token))
    assert refused.value.reason == "unknown_kid"
    assert (
        ServiceTokenIssuer.from_files(tmp_path / "missing.pem", [], create=False, **common) is None
    )
