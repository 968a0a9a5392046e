"""Per-tenant scoped Qdrant keys (docs/vectors.md): minted at onboarding, revocable, renewed early.

A tenant's key is a JWT signed (HS256) with the cluster API key, in the claim format Qdrant's
server reads (`src/common/auth/claims.rs`, `lib/storage/src/rbac`):

    {"sub": "bulkhead:<tenant>", "exp": <unix seconds>,
     "access": [{"collection": "<the tenant's collection>", "access": "prw"}],
     "value_exists": {"collection": "<prefix>_keys",
                      "matches": [{"key": "tenant_id", "value": "<tenant>"},
                                  {"key": "key_id", "value": "<uuid>"}]}}

`prw` lets the key read and write points and nothing else (no payload indexes, snapshots or
collection management). There is no `payload` restriction: Qdrant >= 1.16 rejects it, so rows
inside a shared collection stay the forced filter's job, and only `isolation: dedicated` gives a
tenant a collection its key alone can reach. `value_exists` makes the key valid only while its
revocation record exists in the Bulkhead-owned keys collection: deleting the record revokes it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from qdrant_client import AsyncQdrantClient, models

from app.secrets.backend import SecretNotFound, SecretsBackend
from app.secrets.scrub import register_secret
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.scope import Role, TenantScope
from app.vectors.qdrant_collections import create_collection_once
from app.vectors.qdrant_server import CollectionNames, Isolation, ensure_collection

_log = logging.getLogger(__name__)

JWT_SECRET_NAME = "qdrant-jwt"  # noqa: S105 - the name of a secret ref, not a value
ALGORITHM = "HS256"
KEY_ID_FIELD = "key_id"
TENANT_FIELD = "tenant_id"


def jwt_ref(tenant_id: str) -> SecretRef:
    """Where a tenant's Qdrant JWT is stored: `tenants/<id>/qdrant-jwt` (versioned)."""
    return SecretRef(tenant_id=tenant_id, name=JWT_SECRET_NAME)


def tenant_key_claims(
    *, tenant_id: str, collections: Iterable[str], keys_collection: str, key_id: str, exp: int
) -> dict[str, Any]:
    """The claims of a tenant's scoped key, exactly in Qdrant's documented format."""
    return {
        "sub": f"bulkhead:{tenant_id}",
        "exp": exp,
        "access": [{"collection": name, "access": "prw"} for name in collections],
        "value_exists": {
            "collection": keys_collection,
            "matches": [
                {"key": TENANT_FIELD, "value": tenant_id},
                {"key": KEY_ID_FIELD, "value": key_id},
            ],
        },
    }


def sign(claims: dict[str, Any], cluster_key: SecretValue) -> SecretValue:
    """The JWT of `claims`, HS256 with the cluster API key."""
    return SecretValue(jwt.encode(claims, cluster_key.reveal(), algorithm=ALGORITHM))


def read_claims(token: SecretValue, cluster_key: SecretValue) -> dict[str, Any] | None:
    """The claims of a stored key if its signature is ours (expired or not), else None."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token.reveal(),
            cluster_key.reveal(),
            algorithms=[ALGORITHM],
            options={"verify_exp": False},
        )
    except jwt.InvalidTokenError:
        return None
    return claims


def _record_id(tenant_id: str, key_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bulkhead-qdrant-key:{tenant_id}/{key_id}"))


@dataclass(frozen=True, slots=True)
class MintResult:
    """What `TenantKeyMinter.ensure` did."""

    minted: bool
    version: int | None = None
    reason: str = ""


class TenantKeyMinter:
    """Creates a tenant's collections and revocation record, then mints and stores its key.

    Holds the cluster key and the admin client; it runs at onboarding and in the service's
    re-mint loop, never on a request path.

    Args:
        admin: Client authenticated with the cluster key.
        cluster_key: The cluster API key (HS256 secret). None (local mode, a dev server
            without auth): collections are created, no key is minted.
        secrets: Where the tenant keys are stored.
        names: Collection naming.
        ttl_seconds: Lifetime of a minted key.
        refresh_before_seconds: Re-mint once a key expires within this window.
        clock: Wall clock in Unix seconds (tests move it).
    """

    def __init__(
        self,
        *,
        admin: AsyncQdrantClient,
        cluster_key: SecretValue | None,
        secrets: SecretsBackend,
        names: CollectionNames,
        ttl_seconds: int,
        refresh_before_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._admin = admin
        self._cluster_key = cluster_key
        self._secrets = secrets
        self._names = names
        self._ttl = ttl_seconds
        self._refresh_before = refresh_before_seconds
        self._clock = clock

    async def ensure_platform_collections(self) -> None:
        """Create the shared chunk collection and the keys collection if missing."""
        await ensure_collection(self._admin, self._names.shared)
        if not await self._admin.collection_exists(self._names.keys):
            await create_collection_once(self._admin, self._names.keys, vectors_config={})

    async def ensure(self, tenant_id: str, isolation: Isolation) -> MintResult:
        """Make the tenant's collections exist and its stored key valid for the next window.

        Re-mints when no key is stored, when the stored key is not ours, reaches other
        collections than the tenant's isolation needs, or expires within the refresh window.

        Raises:
            SecretsBackendUnavailable: The secrets backend cannot be reached.
            SecretsReadOnly: The backend accepts no writes (the env backend).
        """
        await self.ensure_platform_collections()
        collection = self._names.for_tenant(tenant_id, isolation)
        if isolation == "dedicated":
            await ensure_collection(self._admin, collection)
        if self._cluster_key is None:
            return MintResult(minted=False, reason="no cluster key")
        scope = _service_scope(tenant_id)
        reason = await self._why_remint(tenant_id, collection, scope, self._cluster_key)
        if not reason:
            return MintResult(minted=False)
        key_id = str(uuid.uuid4())
        exp = int(self._clock()) + self._ttl
        # The record first: a stored key must never point at a record that does not exist.
        await self._admin.upsert(
            self._names.keys,
            [
                models.PointStruct(
                    id=_record_id(tenant_id, key_id),
                    vector={},
                    payload={TENANT_FIELD: tenant_id, KEY_ID_FIELD: key_id, "exp": exp},
                )
            ],
        )
        claims = tenant_key_claims(
            tenant_id=tenant_id,
            collections=[collection],
            keys_collection=self._names.keys,
            key_id=key_id,
            exp=exp,
        )
        token = sign(claims, self._cluster_key)
        register_secret(token)
        version = await self._secrets.put(jwt_ref(tenant_id), token, scope=scope)
        _log.info("minted Qdrant key for tenant %s (%s, version %d)", tenant_id, reason, version)
        # Records of keys already past `exp` admit nothing any more; the previous key's record
        # stays until then, so replicas still holding it keep working across a re-mint.
        await self._delete_records(tenant_id, expired_before=int(self._clock()))
        return MintResult(minted=True, version=version, reason=reason)

    async def _why_remint(
        self, tenant_id: str, collection: str, scope: TenantScope, cluster_key: SecretValue
    ) -> str:
        try:
            stored = await self._secrets.get(jwt_ref(tenant_id), scope=scope)
        except SecretNotFound:
            return "no key"
        claims = read_claims(stored, cluster_key)
        if claims is None:
            return "not signed by the cluster key"
        if claims.get("access") != [{"collection": collection, "access": "prw"}]:
            return "collections changed"
        if int(claims.get("exp", 0)) - self._clock() < self._refresh_before:
            return "expiring"
        matches = {m["key"]: m["value"] for m in claims["value_exists"]["matches"]}
        record = await self._admin.retrieve(
            self._names.keys, [_record_id(tenant_id, str(matches.get(KEY_ID_FIELD)))]
        )
        return "" if record else "revoked"

    async def revoke(self, tenant_id: str) -> None:
        """Revoke every key of the tenant: delete its revocation records (effective at once).

        The next `ensure` (an `apply`, or the re-mint loop) mints a fresh key; offboarding
        removes the tenant first so that none is minted.
        """
        await self._delete_records(tenant_id)

    async def _delete_records(self, tenant_id: str, *, expired_before: int | None = None) -> None:
        must: list[models.Condition] = [
            models.FieldCondition(key=TENANT_FIELD, match=models.MatchValue(value=tenant_id))
        ]
        if expired_before is not None:
            must.append(models.FieldCondition(key="exp", range=models.Range(lt=expired_before)))
        await self._admin.delete(
            self._names.keys,
            points_selector=models.FilterSelector(filter=models.Filter(must=must)),
        )


def _service_scope(tenant_id: str) -> TenantScope:
    return TenantScope.system(tenant_id, actor="bulkhead:qdrant-keys", roles={Role.ADMIN})
