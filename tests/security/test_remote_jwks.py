"""Tenant issuers with a real JWKS endpoint on 127.0.0.1 (ES256 and RS256 keys made here).

The JWKS server is `http.server` in a thread; "JWKS endpoint down" means that server is stopped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.db.pool import connect
from app.identity.jwks import JwksCache, KeyNotFound
from app.lifecycle.apply import apply_manifest
from app.tenancy.manifest import IdentitySpec, IssuerSpec, ManifestError, TenantManifest
from tests.conftest import TenantFactory, counter_value, wait_for_tenant
from tests.security.test_api_keys import assert_problem

Client = AsyncTestClient[Litestar]
FAILURES = "bulkhead.auth.failures"


@dataclass
class JwksServer:
    """A JWKS endpoint whose key set and hit count the test controls."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Signer:
    kid: str
    algorithm: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))  # type: ignore[attr-defined]
        return {**public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **headers}
        )


def es256(kid: str = "es-1") -> Signer:
    return Signer(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def rs256(kid: str = "rs-1") -> Signer:
    return Signer(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    yield server
    server.stop()


@dataclass
class RemoteIssuer:
    tenant: str
    issuer: str
    server: JwksServer
    es: Signer
    rs: Signer

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": "bulkhead",
            "sub": "svc-user",
            "roles": ["search"],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}


async def onboard(database_url: str, kek: bytes, manifest: TenantManifest) -> None:
    connection = await connect(database_url)
    try:
        await apply_manifest(connection, manifest, kek=kek)
    finally:
        await connection.close()


@pytest.fixture
async def remote(
    jwks_server: JwksServer, database_url: str, kek: bytes, app: Litestar, client: Client
) -> RemoteIssuer:
    es, rs = es256(), rs256()
    jwks_server.keys = [es.jwk(), rs.jwk()]
    tenant = f"r-{uuid.uuid4().hex[:10]}"
    issuer = f"{jwks_server.base}/"
    manifest = TenantManifest(
        id=tenant,
        name=tenant,
        identity=IdentitySpec(
            issuers=(
                IssuerSpec(
                    issuer=issuer,
                    audience="bulkhead",
                    jwks_uri=f"{jwks_server.base}/jwks.json",
                    roles_claim="roles",
                ),
            )
        ),
    )
    await onboard(database_url, kek, manifest)
    await wait_for_tenant(app, tenant)
    return RemoteIssuer(tenant=tenant, issuer=issuer, server=jwks_server, es=es, rs=rs)


async def search(client: Client, token: str, **headers: str) -> Any:
    return await client.post(
        "/v1/search",
        json={"query": "anything"},
        headers={"Authorization": f"Bearer {token}", **headers},
    )


async def refused(client: Client, token: str, *, tenant: str, reason: str) -> None:
    before = counter_value(FAILURES, tenant=tenant, reason=reason)
    assert_problem(await search(client, token), 401, "unauthenticated")
    assert counter_value(FAILURES, tenant=tenant, reason=reason) == before + 1


async def test_es256_and_rs256_tokens_from_the_remote_jwks_are_accepted(
    client: Client, remote: RemoteIssuer
) -> None:
    for signer in (remote.es, remote.rs):
        response = await search(client, signer.sign(remote.claims()))
        assert response.status_code == 200, response.text


async def test_roles_come_from_the_configured_claim(client: Client, remote: RemoteIssuer) -> None:
    token = remote.es.sign(remote.claims(roles=["chat"]))
    assert_problem(await search(client, token), 403, "forbidden")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_hs256_signed_with_the_issuers_rsa_public_key_is_refused(
    client: Client, remote: RemoteIssuer
) -> None:
    pem = remote.rs.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": remote.rs.kid}).encode())
    payload = _b64(json.dumps(remote.claims()).encode())
    signature = _b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    # Refused before the issuer is even looked at, so it counts as tenant "unknown".
    await refused(
        client, f"{header}.{payload}.{signature}", tenant="unknown", reason="bad_algorithm"
    )


async def test_alg_none_is_refused(client: Client, remote: RemoteIssuer) -> None:
    header = _b64(json.dumps({"alg": "none", "kid": remote.es.kid}).encode())
    payload = _b64(json.dumps(remote.claims()).encode())
    await refused(client, f"{header}.{payload}.", tenant="unknown", reason="bad_algorithm")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (lambda now: {"exp": now - 600, "iat": now - 900}, "expired"),
        (lambda now: {"nbf": now + 600}, "not_yet_valid"),
        (lambda now: {"iat": now + 600, "nbf": None, "exp": now + 900}, "not_yet_valid"),
        (lambda now: {"aud": "another-service"}, "bad_audience"),
        (lambda now: {"exp": now + 2 * 24 * 3600}, "lifetime"),
        (lambda now: {"exp": None}, "invalid"),
    ],
    ids=["expired", "not-yet-valid", "issued-in-future", "wrong-aud", "lifetime", "no-exp"],
)
async def test_bad_claims_are_refused_with_their_reason(
    client: Client,
    remote: RemoteIssuer,
    overrides: Callable[[int], dict[str, Any]],
    reason: str,
) -> None:
    # Times are taken when the test runs, not when the suite is collected minutes earlier.
    token = remote.es.sign(remote.claims(**overrides(int(time.time()))))
    await refused(client, token, tenant=remote.tenant, reason=reason)


async def test_clock_skew_within_the_leeway_is_tolerated(
    client: Client, remote: RemoteIssuer
) -> None:
    now = int(time.time())
    token = remote.rs.sign(remote.claims(nbf=now + 20, iat=now + 20, exp=now + 300))
    assert (await search(client, token)).status_code == 200


async def test_wrong_issuer_is_refused(client: Client, remote: RemoteIssuer) -> None:
    token = remote.es.sign(remote.claims(iss=remote.issuer.rstrip("/")))
    await refused(client, token, tenant="unknown", reason="unknown_issuer")


async def test_tampered_payload_is_refused(client: Client, remote: RemoteIssuer) -> None:
    header, _, signature = remote.es.sign(remote.claims()).split(".")
    payload = _b64(json.dumps(remote.claims(roles=["admin", "search"])).encode())
    await refused(client, f"{header}.{payload}.{signature}", tenant=remote.tenant, reason="invalid")


async def test_unknown_kids_cannot_flood_the_issuer(client: Client, remote: RemoteIssuer) -> None:
    assert (await search(client, remote.es.sign(remote.claims()))).status_code == 200
    hits = remote.server.hits
    stranger = es256()
    for kid in ("nope", "../../etc/passwd", "https://evil.example/jwks.json", *"abcdefgh"):
        forged = stranger.sign(remote.claims(), kid=kid)
        await refused(client, forged, tenant=remote.tenant, reason="unknown_kid")
    # At most one refetch per issuer per interval, however many new kids arrive.
    assert remote.server.hits - hits <= 1


async def test_jwks_down_keeps_cached_keys_and_fails_new_kids_closed(
    client: Client, remote: RemoteIssuer
) -> None:
    assert (await search(client, remote.es.sign(remote.claims()))).status_code == 200
    rotated = es256("es-2")
    remote.server.keys.append(rotated.jwk())
    remote.server.stop()
    assert (await search(client, remote.es.sign(remote.claims()))).status_code == 200
    await refused(client, rotated.sign(remote.claims()), tenant=remote.tenant, reason="unknown_kid")


async def test_jwks_cache_serves_stale_keys_while_the_endpoint_is_down(
    jwks_server: JwksServer,
) -> None:
    """The cache alone, with a TTL short enough to expire within the test."""
    signer = es256()
    jwks_server.keys = [signer.jwk()]
    uri = f"{jwks_server.base}/jwks.json"
    async with httpx.AsyncClient() as http:
        cache = JwksCache(http=http, ttl_seconds=0.2, min_refetch_seconds=0.1)
        await cache.key(issuer="iss", jwks_uri=uri, kid=signer.kid)
        jwks_server.stop()
        time.sleep(0.3)  # noqa: ASYNC251 - nothing else runs on this loop meanwhile
        key = await cache.key(issuer="iss", jwks_uri=uri, kid=signer.kid)
        assert key.key_id == signer.kid
        with pytest.raises(KeyNotFound):
            await cache.key(issuer="iss", jwks_uri=uri, kid="es-new")


async def test_single_tenant_issuer_ignores_a_tenant_claim_naming_another_tenant(
    client: Client, remote: RemoteIssuer, tenant_pair: tuple[str, str]
) -> None:
    other = tenant_pair[0]
    token = remote.es.sign(remote.claims(tenant=other, org_id=other))
    assert (await search(client, token)).status_code == 200  # still the issuer's own tenant
    naming = await search(client, token, **{"X-Tenant-ID": other})
    assert_problem(naming, 403, "tenant_mismatch")


async def test_shared_issuer_with_another_tenants_claim_value_is_refused(
    client: Client,
    jwks_server: JwksServer,
    database_url: str,
    kek: bytes,
    app: Litestar,
    make_tenant: TenantFactory,
) -> None:
    signer = es256()
    jwks_server.keys = [signer.jwk()]
    issuer = f"{jwks_server.base}/shared/"
    tenant = f"s-{uuid.uuid4().hex[:10]}"
    spec = IssuerSpec(
        issuer=issuer,
        audience="bulkhead",
        jwks_uri=f"{jwks_server.base}/jwks.json",
        tenant_claim="org_id",
        tenant_claim_value=tenant,
    )
    await onboard(
        database_url,
        kek,
        TenantManifest(id=tenant, name=tenant, identity=IdentitySpec(issuers=(spec,))),
    )
    await wait_for_tenant(app, tenant)
    other = await make_tenant("b")
    await wait_for_tenant(app, other)
    now = int(time.time())
    base = {
        "iss": issuer,
        "aud": "bulkhead",
        "sub": "u",
        "roles": ["search"],
        "iat": now,
        "exp": now + 300,
    }
    assert (await search(client, signer.sign({**base, "org_id": tenant}))).status_code == 200
    await refused(
        client, signer.sign({**base, "org_id": other}), tenant="unknown", reason="tenant_claim"
    )


async def test_ambiguous_issuer_mapping_is_refused_at_apply(
    database_url: str, kek: bytes, remote: RemoteIssuer
) -> None:
    """A second tenant on an issuer already bound to one tenant, with no claim to tell apart."""
    tenant = f"amb-{uuid.uuid4().hex[:8]}"
    spec = IssuerSpec(issuer=remote.issuer, audience="bulkhead", jwks_uri=None)
    manifest = TenantManifest(id=tenant, name=tenant, identity=IdentitySpec(issuers=(spec,)))
    with pytest.raises(ManifestError, match="already maps to tenant"):
        await onboard(database_url, kek, manifest)


async def test_header_alg_must_match_the_keys_algorithm(
    client: Client, remote: RemoteIssuer
) -> None:
    """An ES256 signature presented under the RSA key's kid is refused, whatever it claims."""
    token = remote.es.sign(remote.claims(), kid=remote.rs.kid)
    await refused(client, token, tenant=remote.tenant, reason="bad_algorithm")
