"""Everything with a life: opened once in the lifespan, closed in reverse, handed out by DI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
import httpx
from litestar.datastructures import State

from app.audit.writer import AuditWriter
from app.chat.service import ChatService
from app.config import Settings
from app.db.pool import create_pool
from app.db.urls import with_user
from app.identity.dev_issuer import DevIssuer
from app.identity.jwks import JwksCache
from app.identity.tokens import JwtVerifier
from app.retrieval.edge import EdgeIndex
from app.retrieval.service import DocumentService
from app.secrets.backend import SecretsBackend
from app.secrets.cache import SecretCache
from app.secrets.kek import load_master_key
from app.secrets.local import LocalSecretsBackend, listen_for_changes
from app.secrets.setup import build_backend
from app.secrets.values import opted_in_platform_refs
from app.tenancy.registry import TenantRegistry

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class Resources:
    """The service's long-lived collaborators."""

    pool: asyncpg.Pool
    registry: TenantRegistry
    index: EdgeIndex
    secrets: SecretsBackend
    secret_cache: SecretCache
    verifier: JwtVerifier
    audit: AuditWriter
    documents: DocumentService
    chat: ChatService
    dev_issuer: DevIssuer | None


def app_dsn(settings: Settings) -> str:
    """The runtime (non-owner) connection string.

    Raises:
        RuntimeError: No database is configured.
    """
    if settings.db.app_url:
        return settings.db.app_url
    if not settings.db.url:
        raise RuntimeError("no database configured: set DATABASE_URL (or run `bulkhead dev`)")
    return with_user(settings.db.url, settings.db.app_role)


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """Open pool, registry, vector index, secrets, verifier and audit writer; close on exit."""
    async with AsyncExitStack() as stack:
        kek = load_master_key(settings)
        dsn = app_dsn(settings)
        pool = await create_pool(dsn, min_size=settings.db.pool_min, max_size=settings.db.pool_max)
        stack.push_async_callback(pool.close)
        registry = TenantRegistry(pool)
        await registry.load()
        await registry.listen(dsn)
        stack.push_async_callback(registry.close)
        index = EdgeIndex.open(settings.vector_path, search_threads=settings.vectors.search_threads)
        stack.push_async_callback(index.close)
        http = httpx.AsyncClient(follow_redirects=False)
        stack.push_async_callback(http.aclose)
        secrets = build_backend(settings, pool=pool, kek=kek)
        stack.push_async_callback(secrets.close)
        secret_cache = SecretCache(
            secrets,
            ttl_seconds=settings.secrets.cache_ttl_seconds,
            max_stale_seconds=settings.secrets.max_stale_seconds,
            platform_refs=lambda tenant_id: _platform_refs(registry, tenant_id),
        )
        if isinstance(secrets, LocalSecretsBackend):
            # Other replicas' `bulkhead secrets put` reaches this cache at once, not after a TTL.
            listener = await listen_for_changes(dsn, secret_cache.forget)
            stack.push_async_callback(listener.close)
        dev_issuer = (
            DevIssuer.load_or_create(
                settings.dev_signing_key_path,
                issuer=settings.auth.dev_issuer,
                audience=settings.auth.audience,
            )
            if settings.dev
            else None
        )
        verifier = JwtVerifier(
            registry=registry,
            jwks=JwksCache(http=http, dev_issuer=dev_issuer),
            settings=settings.auth,
        )
        audit = AuditWriter(
            pool,
            buffer_size=settings.audit.buffer_size,
            batch_size=settings.audit.batch_size,
            flush_interval=settings.audit.flush_interval_seconds,
        )
        audit.start()
        stack.push_async_callback(audit.close)
        documents = DocumentService(
            pool=pool, index=index, limits=settings.limits, chunking=settings.chunking
        )
        chat = ChatService(
            pool=pool,
            documents=documents,
            registry=registry,
            max_message_chars=settings.limits.max_query_chars,
            resolver=secret_cache,
            llm=settings.llm,
        )
        stack.push_async_callback(chat.aclose)
        yield Resources(
            pool=pool,
            registry=registry,
            index=index,
            secrets=secrets,
            secret_cache=secret_cache,
            verifier=verifier,
            audit=audit,
            documents=documents,
            chat=chat,
            dev_issuer=dev_issuer,
        )


def _platform_refs(registry: TenantRegistry, tenant_id: str) -> frozenset[str]:
    record = registry.tenant(tenant_id)
    return opted_in_platform_refs(record.manifest if record else None)


def provide_documents(state: State) -> DocumentService:
    """DI: the document service."""
    resources: Resources = state.resources
    return resources.documents


def provide_chat(state: State) -> ChatService:
    """DI: the chat service."""
    resources: Resources = state.resources
    return resources.chat
