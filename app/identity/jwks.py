"""Signing keys of trusted issuers: fetched from each issuer's JWKS and cached.

An unknown `kid` triggers at most one refetch per issuer per `min_refetch_seconds`, so a flood
of tokens with invented kids cannot turn Bulkhead into an amplifier against the IdP.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from app.identity.dev_issuer import DevIssuer


class KeyNotFound(LookupError):
    """No key with that kid is known for the issuer (after any allowed refetch)."""


@dataclass
class _IssuerKeys:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JwksCache:
    """Resolves (issuer, kid) to a public key."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        dev_issuer: DevIssuer | None = None,
        ttl_seconds: float = 300.0,
        min_refetch_seconds: float = 30.0,
    ) -> None:
        self._http = http
        self._dev_issuer = dev_issuer
        self._ttl = ttl_seconds
        self._min_refetch = min_refetch_seconds
        self._issuers: dict[str, _IssuerKeys] = {}
        if dev_issuer is not None:
            self._issuers[dev_issuer.issuer] = _IssuerKeys(
                keys=_parse(dev_issuer.jwks()), fetched_at=float("inf")
            )

    async def key(self, *, issuer: str, jwks_uri: str | None, kid: str) -> jwt.PyJWK:
        """Return the issuer's key `kid`, fetching the JWKS when stale or when `kid` is new.

        Raises:
            KeyNotFound: The issuer has no such key, or its JWKS cannot be had.
        """
        entry = self._issuers.setdefault(issuer, _IssuerKeys())
        now = time.monotonic()
        fresh = now - entry.fetched_at < self._ttl
        if kid in entry.keys and fresh:
            return entry.keys[kid]
        if jwks_uri is None:
            raise KeyNotFound(f"issuer {issuer!r} has no JWKS")
        async with entry.lock:
            if now - entry.fetched_at >= self._min_refetch:
                try:
                    entry.keys = await self._fetch(jwks_uri)
                    entry.fetched_at = time.monotonic()
                except (httpx.HTTPError, ValueError, jwt.PyJWKError, jwt.PyJWKSetError):
                    # Keep serving keys we already trust; a new kid fails closed.
                    entry.fetched_at = time.monotonic() - self._ttl + self._min_refetch
        if kid in entry.keys:
            return entry.keys[kid]
        raise KeyNotFound(f"issuer {issuer!r} has no key {kid!r}")

    async def _fetch(self, uri: str) -> dict[str, jwt.PyJWK]:
        response = await self._http.get(uri, timeout=5.0)
        response.raise_for_status()
        return _parse(response.json())


def _parse(document: Any) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for key in jwt.PyJWKSet.from_dict(document).keys:
        if key.key_id:
            keys[key.key_id] = key
    return keys
