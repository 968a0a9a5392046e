"""Bulkhead's own short-lived service tokens, exchanged for an API key at `/v1/auth/token`.

Signed with an Ed25519 key shared by every replica (a PEM file, as a mounted secret would be).
Rotation: put the new key in `service_signing_key_file` and list the old one in
`service_previous_key_files` until the last token it signed has expired (≤ 15 minutes); both
public keys are published at `/.well-known/jwks.json` and accepted meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.identity.dev_issuer import _write_private
from app.problems import Unauthenticated

TENANT_CLAIM = "bulkhead_tenant"
KEY_CLAIM = "bulkhead_key"


def _kid(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "bk-" + hashlib.sha256(raw).hexdigest()[:16]


def _load(path: Path) -> Ed25519PrivateKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return loaded


def generate_signing_key(path: Path) -> None:
    """Write a new Ed25519 signing key to `path` (mode 0600; refuses to overwrite)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)


class ServiceTokenIssuer:
    """Mints and verifies service JWTs (EdDSA only, exact issuer and audience)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        key: Ed25519PrivateKey,
        previous: list[Ed25519PrivateKey] | None = None,
        leeway_seconds: int = 30,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._key = key
        self.kid = _kid(key.public_key())
        self._leeway = leeway_seconds
        self._public: dict[str, Ed25519PublicKey] = {self.kid: key.public_key()}
        for old in previous or []:
            self._public.setdefault(_kid(old.public_key()), old.public_key())

    @classmethod
    def from_files(
        cls, path: Path, previous: list[Path], *, create: bool, **kwargs: Any
    ) -> ServiceTokenIssuer | None:
        """Load the signing key (generating it when `create`); None when it does not exist."""
        if not path.exists():
            if not create:
                return None
            generate_signing_key(path)
        return cls(key=_load(path), previous=[_load(p) for p in previous], **kwargs)

    def jwks(self) -> dict[str, Any]:
        """Public keys, as served at `/.well-known/jwks.json`."""
        keys = []
        for kid, public in self._public.items():
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
            jwk.update({"kid": kid, "alg": "EdDSA", "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def mint(self, *, tenant_id: str, key_id: str, roles: list[str]) -> str:
        """A token for API key `key_id` of `tenant_id`, valid for `ttl_seconds`."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": f"apikey:{key_id}",
            TENANT_CLAIM: tenant_id,
            KEY_CLAIM: key_id,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})

    def verify(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        """Verified claims of a service token.

        Raises:
            Unauthenticated: Bad algorithm, unknown kid, signature, times or lifetime.
        """
        if header.get("alg") != "EdDSA":
            raise Unauthenticated("token algorithm not accepted", reason="bad_algorithm")
        public = self._public.get(str(header.get("kid")))
        if public is None:
            raise Unauthenticated("unknown signing key", reason="unknown_kid")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public,
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub", TENANT_CLAIM, KEY_CLAIM]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("token signature or claims invalid", reason="invalid") from exc
        if claims["exp"] - claims["iat"] > self.ttl_seconds:
            raise Unauthenticated("token lifetime exceeds the maximum", reason="lifetime")
        return claims
