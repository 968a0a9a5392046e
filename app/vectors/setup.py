"""Choose and open the configured vector backend (`vectors.backend`): Qdrant Edge or server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from qdrant_client import AsyncQdrantClient

from app.config import Settings
from app.secrets.backend import SecretNotFound, SecretsBackend
from app.secrets.cache import SecretCache
from app.secrets.scrub import register_secret
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import TenantManifest
from app.tenancy.scope import Role, TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.index import VectorIndex
from app.vectors.qdrant_clients import ScopedKeyClients, SharedClient
from app.vectors.qdrant_collections import require_tenant_statistics
from app.vectors.qdrant_keys import TenantKeyMinter, jwt_ref
from app.vectors.qdrant_server import CollectionNames, Isolation, IsolationOf, QdrantServerIndex

_log = logging.getLogger(__name__)

OFFBOARD_ACTOR = "bulkhead:offboard"
"""Who deletes a tenant's points, collection and Qdrant key in server mode."""

NEW_TENANT_POLL_SECONDS = 2.0


async def provision_server_tenant(
    settings: Settings, secrets: SecretsBackend, manifest: TenantManifest
) -> str:
    """Server mode: create the tenant's collections and mint its scoped key; say how it stands.

    Raises:
        SecretsBackendUnavailable: The key could not be stored.
    """
    async with open_qdrant_admin(settings, secrets) as admin:
        outcome = await admin.minter.ensure(manifest.id, manifest.retrieval.isolation)
    where = CollectionNames(settings.vectors.qdrant.collection_prefix).for_tenant(
        manifest.id, manifest.retrieval.isolation
    )
    if outcome.minted:
        return f"Qdrant collection {where} ready; scoped key minted ({outcome.reason})"
    detail = f" ({outcome.reason})" if outcome.reason else " (current key kept)"
    return f"Qdrant collection {where} ready; no key minted{detail}"


async def cluster_key(settings: Settings, secrets: SecretsBackend) -> SecretValue | None:
    """The cluster API key, resolved through the secrets backend (never plain config).

    Raises:
        SecretNotFound: The configured ref holds nothing.
        SecretsBackendUnavailable: The secrets backend cannot be reached.
    """
    text = settings.vectors.qdrant.api_key_secret
    if not text:
        return None
    ref = SecretRef.parse(text)
    scope = (
        TenantScope.platform(actor="bulkhead:qdrant")
        if ref.tenant_id is None
        else TenantScope.system(ref.tenant_id, actor="bulkhead:qdrant")
    )
    platform_refs = frozenset({str(ref)}) if ref.tenant_id is None else frozenset()
    key = await secrets.get(ref, scope=scope, platform_refs=platform_refs)
    register_secret(key)  # scrubbed from logs and spans like every cached secret
    return key


def _admin_client(settings: Settings, key: SecretValue | None) -> AsyncQdrantClient:
    qdrant = settings.vectors.qdrant
    if not qdrant.url:
        return AsyncQdrantClient(path=str(settings.qdrant_local_path))
    return AsyncQdrantClient(
        url=qdrant.url,
        api_key=key.reveal() if key is not None else None,
        prefer_grpc=qdrant.prefer_grpc,
        timeout=qdrant.timeout_seconds,
    )


@dataclass(slots=True)
class QdrantAdmin:
    """The cluster-key side of server mode: collections and tenant keys."""

    client: AsyncQdrantClient
    minter: TenantKeyMinter
    key: SecretValue | None


@asynccontextmanager
async def open_qdrant_admin(
    settings: Settings, secrets: SecretsBackend
) -> AsyncIterator[QdrantAdmin]:
    """The admin client and the key minter (onboarding, the re-mint loop)."""
    key = await cluster_key(settings, secrets)
    client = _admin_client(settings, key)
    qdrant = settings.vectors.qdrant
    minter = TenantKeyMinter(
        admin=client,
        cluster_key=key,
        secrets=secrets,
        names=CollectionNames(qdrant.collection_prefix),
        ttl_seconds=qdrant.jwt_ttl_seconds,
        refresh_before_seconds=qdrant.jwt_refresh_before_seconds,
    )
    try:
        yield QdrantAdmin(client=client, minter=minter, key=key)
    finally:
        await client.close()


@asynccontextmanager
async def open_vector_index(
    settings: Settings,
    *,
    secrets: SecretsBackend,
    secret_cache: SecretCache,
    tenant_ids: Callable[[], list[str]],
    isolation_of: IsolationOf,
) -> AsyncIterator[VectorIndex]:
    """Open the configured index; in server mode also keep tenant keys fresh in the background.

    Raises:
        SecretNotFound: The cluster key's ref holds nothing.
        QdrantServerTooOld: The server cannot keep BM25 statistics per tenant (before 1.19).
    """
    if settings.vectors.backend == "edge":
        edge = EdgeIndex.open(settings.vector_path, search_threads=settings.vectors.search_threads)
        try:
            yield edge
        finally:
            await edge.close()
        return
    qdrant = settings.vectors.qdrant
    async with AsyncExitStack() as stack:
        admin = await stack.enter_async_context(open_qdrant_admin(settings, secrets))
        if qdrant.url and admin.key is not None:
            clients: ScopedKeyClients | SharedClient = ScopedKeyClients(
                url=qdrant.url,
                secrets=secret_cache,
                monitor=_admin_client(settings, admin.key),
                prefer_grpc=qdrant.prefer_grpc,
                timeout=qdrant.timeout_seconds,
            )
        else:
            # Local mode (one process, no auth) shares the admin client: its path is locked.
            clients = SharedClient(admin.client)
        index = QdrantServerIndex(
            clients, isolation_of=isolation_of, names=CollectionNames(qdrant.collection_prefix)
        )
        # Fails start-up when the server is unreachable, as a broken Edge shard does, or too
        # old to keep BM25 statistics per tenant.
        await require_tenant_statistics(admin.client)
        await admin.minter.ensure_platform_collections()
        await refresh_tenants(admin.minter, tenant_ids(), isolation_of)
        task = asyncio.create_task(
            _refresh_loop(admin.minter, tenant_ids, isolation_of, qdrant.jwt_check_interval_seconds)
        )
        try:
            yield index
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if isinstance(clients, ScopedKeyClients):
                await clients.close()


async def purge_server_tenant(settings: Settings, secrets: SecretsBackend, tenant_id: str) -> str:
    """Offboarding in server mode: revoke the tenant's keys, delete its points and collection.

    Revocation first (its JWT stops working at once), then its points in the shared
    collection, then its dedicated collection if there is one (both are swept, whatever the
    manifest says now), then its stored JWT if still there. Points go through the adapter, so
    the delete is the forced tenant condition like every other vector operation.

    Returns:
        What was deleted, or why the running service is left to do it (local mode: its
        directory is locked by the one process that may open it).
    """
    try:
        async with open_qdrant_admin(settings, secrets) as admin:
            return await _purge(
                admin, secrets, settings.vectors.qdrant.collection_prefix, tenant_id
            )
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        return "the running service deletes the tenant's vectors when it sees the tenant removed"


async def _purge(admin: QdrantAdmin, secrets: SecretsBackend, prefix: str, tenant_id: str) -> str:
    names = CollectionNames(prefix)
    scope = TenantScope.system(tenant_id, actor=OFFBOARD_ACTOR)
    await admin.minter.revoke(tenant_id)
    deleted = 0
    if await admin.client.collection_exists(names.shared):
        shared = QdrantServerIndex(
            SharedClient(admin.client), isolation_of=lambda _: "shared", names=names
        )
        deleted += await shared.delete_tenant(scope=scope)
    dedicated = names.dedicated(tenant_id)
    dropped = ""
    if await admin.client.collection_exists(dedicated):
        own = QdrantServerIndex(
            SharedClient(admin.client), isolation_of=lambda _: "dedicated", names=names
        )
        deleted += await own.tenant_points(scope=scope)
        await admin.client.delete_collection(dedicated)
        dropped = f"; dropped collection {dedicated}"
    # Usually gone already (offboarding deletes every secret of the tenant first).
    with contextlib.suppress(SecretNotFound):
        await secrets.delete(
            jwt_ref(tenant_id),
            scope=TenantScope.system(tenant_id, actor=OFFBOARD_ACTOR, roles={Role.ADMIN}),
        )
    return f"deleted {deleted} vectors{dropped}; Qdrant key revoked, its record and JWT deleted"


async def refresh_tenants(
    minter: TenantKeyMinter, tenant_ids: list[str], isolation_of: IsolationOf
) -> None:
    """Ensure every tenant's collections and key; one tenant's failure does not stop the rest."""
    for tenant_id in tenant_ids:
        isolation: Isolation = isolation_of(tenant_id)
        try:
            await minter.ensure(tenant_id, isolation)
        except Exception:
            _log.exception("could not ensure the Qdrant collections/key of tenant %s", tenant_id)


async def _refresh_loop(
    minter: TenantKeyMinter,
    tenant_ids: Callable[[], list[str]],
    isolation_of: IsolationOf,
    interval: float,
) -> None:
    # Tenants applied while the service runs are provisioned within NEW_TENANT_POLL_SECONDS
    # (in server mode `tenants apply` has already done it; local mode cannot: the path is ours).
    known = set(tenant_ids())
    loop = asyncio.get_running_loop()
    next_full = loop.time() + interval
    while True:
        await asyncio.sleep(min(interval, NEW_TENANT_POLL_SECONDS))
        current = tenant_ids()
        if loop.time() >= next_full:
            next_full = loop.time() + interval
            due = current
        else:
            due = [tenant_id for tenant_id in current if tenant_id not in known]
        known.update(current)
        await refresh_tenants(minter, due, isolation_of)
