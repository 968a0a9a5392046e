"""The dev JWT issuer: an Ed25519 key in the data dir that mints tokens for the demo tenants.

It exists only in dev mode. Its public key is served at `/dev/jwks.json` and trusted in-process;
outside dev mode no token it signs is accepted, whatever a manifest says.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.tenancy.scope import Role


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


class DevIssuer:
    """Signs dev tokens with a persistent Ed25519 key."""

    def __init__(self, *, issuer: str, audience: str, key: Ed25519PrivateKey) -> None:
        self.issuer = issuer
        self.audience = audience
        self._key = key
        public = key.public_key()
        self._jwk: dict[str, Any] = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.kid = "dev-" + raw.hex()[:16]
        self._jwk.update({"kid": self.kid, "alg": "EdDSA", "use": "sig"})

    @classmethod
    def load_or_create(cls, path: Path, *, issuer: str, audience: str) -> DevIssuer:
        """Load the signing key from `path`, generating it (mode 0600) on first use."""
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(path, pem)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(issuer=issuer, audience=audience, key=loaded)

    def jwks(self) -> dict[str, Any]:
        """The public key set, as served at `/dev/jwks.json`."""
        return {"keys": [dict(self._jwk)]}

    def mint(
        self,
        *,
        tenant: str,
        subject: str,
        roles: list[Role],
        groups: list[str] | None = None,
        ttl_seconds: int = 3600,
    ) -> str:
        """Sign a token for `subject` in `tenant`, carrying the claims the demo manifests read."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "tenant": tenant,
            "roles": [str(role) for role in roles],
            "groups": groups or [],
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})
