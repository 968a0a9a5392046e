"""Forged, stale, misaddressed and malformed credentials: each gets 401 (or 403), never a 500."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.identity.dev_issuer import DevIssuer
from tests.conftest import DEV_ISSUER, AuthHeaders, TenantFactory, wait_for_tenant

Client = AsyncTestClient[Litestar]


def _claims(tenant: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": "bulkhead",
        "sub": "mallory",
        "tenant": tenant,
        "roles": ["search", "chat", "ingest", "admin"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(dev_issuer: DevIssuer, claims: dict[str, Any], **headers: Any) -> str:
    """Sign arbitrary claims with the dev issuer's real key (the attacker's best case)."""
    key = dev_issuer._key
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": dev_issuer.kid, **headers})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _search(client: Client, token: str | None, *, raw: str | None = None) -> Any:
    headers = {}
    if raw is not None:
        headers["Authorization"] = raw
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post("/v1/search", json={"query": "anything"}, headers=headers)


def _assert_unauthenticated(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthenticated"
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.fixture
async def tenant(tenant_pair: tuple[str, str]) -> str:
    return tenant_pair[0]


async def test_valid_token_is_accepted(client: Client, tenant: str, dev_issuer: DevIssuer) -> None:
    response = await _search(client, _sign(dev_issuer, _claims(tenant)))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer a b",
        "Bearer not-a-jwt",
        "Bearer " + "A" * 9000,
        "Bearer ..",
    ],
)
async def test_missing_or_malformed_authorization(client: Client, raw: str | None) -> None:
    response = await _search(client, None, raw=raw)
    _assert_unauthenticated(response)


async def test_alg_none_is_refused(client: Client, tenant: str, dev_issuer: DevIssuer) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": dev_issuer.kid}).encode())
    payload = _b64(json.dumps(_claims(tenant)).encode())
    _assert_unauthenticated(await _search(client, f"{header}.{payload}."))


async def test_hs256_signed_with_the_public_key_is_refused(
    client: Client, tenant: str, dev_issuer: DevIssuer
) -> None:
    public_jwk = dev_issuer.jwks()["keys"][0]
    secret = json.dumps(public_jwk).encode()
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": dev_issuer.kid}).encode())
    payload = _b64(json.dumps(_claims(tenant)).encode())
    signature = _b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    _assert_unauthenticated(await _search(client, f"{header}.{payload}.{signature}"))


async def test_token_signed_by_another_key_with_the_same_kid_is_refused(
    client: Client, tenant: str, dev_issuer: DevIssuer
) -> None:
    forged = jwt.encode(
        _claims(tenant),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": dev_issuer.kid},
    )
    _assert_unauthenticated(await _search(client, forged))


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200, "nbf": None},
        {"nbf": int(time.time()) + 3600},
        {"aud": "someone-else"},
        {"iss": "https://evil.example/"},
        {"exp": None},
        {"sub": None},
        {"iat": None},
        {"exp": int(time.time()) + 30 * 24 * 3600},
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-aud",
        "unknown-iss",
        "no-exp",
        "no-sub",
        "no-iat",
        "lifetime",
    ],
)
async def test_bad_claims_are_refused(
    client: Client, tenant: str, dev_issuer: DevIssuer, overrides: dict[str, Any]
) -> None:
    _assert_unauthenticated(await _search(client, _sign(dev_issuer, _claims(tenant, **overrides))))


async def test_unknown_kid_is_refused(client: Client, tenant: str, dev_issuer: DevIssuer) -> None:
    for kid in ("nope", "../../etc/passwd", "https://evil.example/jwks.json"):
        _assert_unauthenticated(await _search(client, _sign(dev_issuer, _claims(tenant), kid=kid)))


async def test_tenant_claim_for_a_tenant_not_onboarded_is_refused(
    client: Client, dev_issuer: DevIssuer
) -> None:
    _assert_unauthenticated(await _search(client, _sign(dev_issuer, _claims("never-onboarded"))))


async def test_tampered_payload_cannot_switch_tenant(
    client: Client, tenant_pair: tuple[str, str], dev_issuer: DevIssuer
) -> None:
    mine, theirs = tenant_pair
    header, _, signature = _sign(dev_issuer, _claims(mine)).split(".")
    forged_payload = _b64(json.dumps(_claims(theirs)).encode())
    _assert_unauthenticated(await _search(client, f"{header}.{forged_payload}.{signature}"))


async def test_disabled_tenant_is_forbidden_not_500(
    client: Client, app: Litestar, make_tenant: TenantFactory, owner_pool: Any, auth: AuthHeaders
) -> None:
    tenant = await make_tenant("off")
    await wait_for_tenant(app, tenant)
    await owner_pool.execute("UPDATE tenants SET status = 'disabled' WHERE id = $1", tenant)
    await owner_pool.execute("SELECT pg_notify('bulkhead_tenants', $1)", tenant)
    registry = app.state.resources.registry
    for _ in range(100):
        record = registry.tenant(tenant)
        if record is not None and not record.active:
            break
        await asyncio.sleep(0.02)
    response = await client.post("/v1/search", json={"query": "x"}, headers=auth(tenant))
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


async def test_public_endpoints_need_no_token(client: Client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["components"] == {"db": "ok", "vectors": "ok", "secrets": "ok"}
    jwks = (await client.get("/dev/jwks.json")).json()
    assert [key["alg"] for key in jwks["keys"]] == ["EdDSA"]
    assert all("d" not in key for key in jwks["keys"])


@pytest.mark.parametrize(
    ("host", "status", "code"),
    [
        ("evil.example", 401, "unauthenticated"),
        ("localhost", 401, "unauthenticated"),
        ("127.0.0.1:8000", 401, "unauthenticated"),
        ("a" * 300, 401, "unauthenticated"),
        ("testserver.local/healthz", 400, "bad_request"),
    ],
)
async def test_host_header_never_decides_auth(
    client: Client, host: str, status: int, code: str
) -> None:
    """Routing and the public/protected decision use the ASGI path, never the Host header."""
    response = await client.post("/v1/search", json={"query": "x"}, headers={"Host": host})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/search/", 401, "unauthenticated"),
        ("/v1//search", 401, "unauthenticated"),
        ("/healthz/../v1/search", 401, "unauthenticated"),
        ("/.well-known/jwks.json/../../v1/search", 401, "unauthenticated"),
        ("/v1/search?/healthz", 401, "unauthenticated"),
        ("//v1/search", 404, "not_found"),
        ("/healthz%2F..%2Fv1/search", 404, "not_found"),
        ("/V1/SEARCH", 404, "not_found"),
        ("/v1/search%00", 404, "not_found"),
        ("/healthzz", 404, "not_found"),
        ("/dev/jwks.jsonx", 404, "not_found"),
    ],
)
async def test_path_tricks_do_not_reach_a_protected_handler(
    client: Client, path: str, status: int, code: str
) -> None:
    """A path either routes to a protected handler (and needs a token) or to nothing at all."""
    response = await client.post(path, json={"query": "x"})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


async def test_oversize_api_key_header_is_refused_before_any_lookup(client: Client) -> None:
    response = await _search(client, None, raw="Bearer bk_" + "a" * 9000)
    _assert_unauthenticated(response)


async def test_a_token_accepted_before_is_refused_once_its_tenant_is_disabled(
    client: Client,
    app: Litestar,
    make_tenant: TenantFactory,
    owner_pool: Any,
    dev_issuer: DevIssuer,
) -> None:
    """The verified-token cache never outlives the tenant's own status."""
    tenant = await make_tenant("cache")
    await wait_for_tenant(app, tenant)
    token = _sign(dev_issuer, _claims(tenant))
    assert (await _search(client, token)).status_code == 200
    assert (await _search(client, token)).status_code == 200  # served from the cache
    await owner_pool.execute("UPDATE tenants SET status = 'disabled' WHERE id = $1", tenant)
    await owner_pool.execute("SELECT pg_notify('bulkhead_tenants', $1)", tenant)
    registry = app.state.resources.registry
    for _ in range(100):
        record = registry.tenant(tenant)
        if record is not None and not record.active:
            break
        await asyncio.sleep(0.02)
    response = await _search(client, token)
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
