"""JWT verification: from a bearer token to a TenantScope, or a refusal with a reason code."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

import jwt

from app.config import AuthSettings
from app.db.registry import IssuerBinding, TenantRegistry
from app.identity.jwks import JwksCache, KeyNotFound
from app.problems import CredentialRefused, Unauthenticated
from app.tenancy.scope import Role, TenantScope

# Asymmetric only: HS* would let anyone holding the public key (i.e. everyone) forge tokens.
ALLOWED_ALGORITHMS = frozenset({"EdDSA", "ES256", "RS256"})
# Frontends send the same token on every request until it expires; its signature is checked
# once and the result kept (keyed by SHA-256 of the token, bounded, dropped at `exp` or after
# the JWKS TTL, whichever comes first).
VERIFIED_CACHE_SIZE = 10_000


class JwtVerifier:
    """Verifies end-user JWTs against the issuers tenants registered."""

    def __init__(
        self, *, registry: TenantRegistry, jwks: JwksCache, settings: AuthSettings
    ) -> None:
        self._registry = registry
        self._jwks = jwks
        self._settings = settings
        self._verified: dict[bytes, tuple[TenantScope, IssuerBinding, float]] = {}

    def cached(self, token: str) -> TenantScope | None:
        """The scope of a token this verifier already verified and still trusts, else None.

        Raises:
            CredentialRefused: The token's tenant has been disabled since.
        """
        return self._cached(hashlib.sha256(token.encode()).digest())

    def _cached(self, digest: bytes) -> TenantScope | None:
        cached = self._verified.get(digest)
        if cached is None:
            return None
        scope, binding, expires = cached
        # Still unexpired, and the issuer binding still in force (a manifest change that
        # drops it invalidates the entry).
        if time.time() < expires and binding in self._registry.bindings(binding.issuer):
            self._check_tenant(binding.tenant_id)
            return scope
        del self._verified[digest]
        return None

    async def verify(self, token: str) -> TenantScope:
        """Verify `token` and build the caller's scope.

        Raises:
            Unauthenticated: Malformed, unsigned, expired, wrongly addressed or unknown token.
            CredentialRefused: Valid token for a disabled tenant.
        """
        digest = hashlib.sha256(token.encode()).digest()
        scope = self._cached(digest)
        if scope is not None:
            return scope
        header, unverified = peek_unverified(token)
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise Unauthenticated("token algorithm not accepted", reason="bad_algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token has no key id", reason="no_kid")
        issuer = unverified.get("iss")
        binding = self._binding(issuer, unverified)
        try:
            scope, expires = await self._verify_bound(token, binding, algorithm=algorithm, kid=kid)
        except Unauthenticated as exc:
            # Attributed to the tenant the token claims, so an SRE sees whose users fail.
            exc.tenant_id = exc.tenant_id or binding.tenant_id
            raise
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        # Kept no longer than the JWKS is trusted without a refetch, so a key the issuer
        # withdraws stops working as soon as it would without this cache.
        self._verified[digest] = (
            scope,
            binding,
            min(
                expires + self._settings.leeway_seconds,
                time.time() + self._settings.jwks_ttl_seconds,
            ),
        )
        return scope

    def _check_tenant(self, tenant_id: str) -> None:
        tenant = self._registry.tenant(tenant_id)
        if tenant is None:
            raise Unauthenticated("tenant unknown", reason="unknown_tenant")
        if not tenant.active:
            raise CredentialRefused(
                "tenant is disabled", reason="tenant_disabled", tenant_id=tenant.id
            )

    async def _verify_bound(
        self, token: str, binding: IssuerBinding, *, algorithm: str, kid: str
    ) -> tuple[TenantScope, float]:
        try:
            key = await self._jwks.key(issuer=binding.issuer, jwks_uri=binding.jwks_uri, kid=kid)
        except KeyNotFound as exc:
            raise Unauthenticated("unknown signing key", reason="unknown_kid") from exc
        if key.algorithm_name != algorithm:
            # The key decides the algorithm, never the token's header alone.
            raise Unauthenticated("token algorithm does not match its key", reason="bad_algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=binding.audience,
                issuer=binding.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("token not yet valid", reason="not_yet_valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("token audience not accepted", reason="bad_audience") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("token signature or claims invalid", reason="invalid") from exc
        self._check_lifetime(claims)
        # The tenant claim was read unverified to pick the binding; confirm it on the
        # verified claims so a tampered payload can never select another tenant.
        if binding.tenant_claim and claims.get(binding.tenant_claim) != binding.tenant_claim_value:
            raise Unauthenticated("token tenant claim invalid", reason="tenant_claim")
        self._check_tenant(binding.tenant_id)
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("token subject invalid", reason="invalid")
        scope = TenantScope(
            tenant_id=binding.tenant_id,
            subject=subject,
            roles=Role.known(_strings(claims.get(binding.roles_claim))),
            groups=tuple(sorted(set(_strings(claims.get(binding.groups_claim))))),
            credential_id=f"jwt:{kid}",
        )
        return scope, float(claims["exp"])

    def _binding(self, issuer: object, claims: dict[str, Any]) -> IssuerBinding:
        if not isinstance(issuer, str):
            raise Unauthenticated("token has no issuer", reason="no_issuer")
        bindings = self._registry.bindings(issuer)
        if not bindings:
            raise Unauthenticated("issuer not trusted", reason="unknown_issuer")
        for binding in bindings:
            if binding.tenant_claim is None or claims.get(binding.tenant_claim) == (
                binding.tenant_claim_value
            ):
                return binding
        raise Unauthenticated("token maps to no tenant of its issuer", reason="tenant_claim")

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        issued, expires = claims.get("iat"), claims.get("exp")
        if not isinstance(issued, int | float) or not isinstance(expires, int | float):
            raise Unauthenticated("token times invalid", reason="invalid")
        if expires - issued > self._settings.max_token_lifetime_seconds:
            raise Unauthenticated("token lifetime exceeds the maximum", reason="lifetime")


def peek_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload, unverified: only to choose the issuer and key.

    PyJWT then verifies the whole token; this only saves parsing it twice on the hot path.

    Raises:
        Unauthenticated: Not three base64url segments of JSON objects.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthenticated("malformed token", reason="malformed")
    try:
        header, payload = (
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
            for part in parts[:2]
        )
    except (ValueError, binascii.Error) as exc:
        raise Unauthenticated("malformed token", reason="malformed") from exc
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise Unauthenticated("malformed token", reason="malformed")
    return header, payload


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []
