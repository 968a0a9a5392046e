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
from app.retrieval.edge import EdgeIndex
from app.retrieval.index import VectorIndex
from app.retrieval.qdrant_clients import ScopedKeyClients, SharedClient
from app.retrieval.qdrant_keys import TenantKeyMinter
from app.retrieval.qdrant_server import CollectionNames, Isolation, IsolationOf, QdrantServerIndex
from app.secrets.backend import SecretsBackend
from app.secrets.cache import SecretCache
from app.secrets.scrub import register_secret
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import ManifestError, TenantManifest
from app.tenancy.scope import TenantScope

_log = logging.getLogger(__name__)

NEW_TENANT_POLL_SECONDS = 2.0


def check_isolation(settings: Settings, manifest: TenantManifest) -> None:
    """Refuse a manifest the configured backend cannot honour.

    Raises:
        ManifestError: `isolation: dedicated` on Qdrant Edge, whose one shard holds everyone.
    """
    if settings.vectors.backend == "edge" and manifest.retrieval.isolation == "dedicated":
        raise ManifestError(
            f"{manifest.id}: retrieval.isolation: dedicated needs the Qdrant server backend"
            " (BULKHEAD_VECTORS__BACKEND=qdrant); Qdrant Edge keeps every tenant in one shard"
        )


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
    scope = TenantScope(
        tenant_id=ref.tenant_id or "platform", subject="bulkhead:qdrant", roles=frozenset()
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
        # Fails start-up when the server is unreachable, as a broken Edge shard does.
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
