"""Everything with a life: opened once in the lifespan, closed in reverse, handed out by DI."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial

import asyncpg
import httpx
from litestar.datastructures import State

from app.audit.failures import AuthFailureLog
from app.audit.reports import AuditReports
from app.audit.writer import AuditWriter
from app.chat.crypto import ConversationCipher
from app.chat.service import ChatService
from app.config import Settings
from app.db.errors import database_unavailable
from app.db.pool import create_pool
from app.db.readiness import ConnectProbe
from app.db.registry import TenantRegistry
from app.db.urls import runtime_url
from app.identity.api_keys import ApiKeyHasher, derive_pepper
from app.identity.authenticator import Authenticator
from app.identity.dev_issuer import DevIssuer
from app.identity.jwks import JwksCache
from app.identity.key_admin import ApiKeyAdmin
from app.identity.key_store import ApiKeyStore
from app.identity.network import ClientAddressResolver
from app.identity.service_tokens import ServiceTokenIssuer
from app.identity.tokens import JwtVerifier
from app.limits.middleware import RequestLimiter
from app.limits.store import CounterStore, PostgresCounters, RedisCounters
from app.privacy.redact import RedactionKind, parse_kinds
from app.retrieval.embedders import TenantEmbedders, tenant_embedders
from app.retrieval.reconcile import ReconcileReport, reconcile_at_start
from app.retrieval.service import DocumentService
from app.secrets.backend import SecretsBackend
from app.secrets.cache import SecretCache
from app.secrets.kek import load_master_key
from app.secrets.local import LocalSecretsBackend, listen_for_changes
from app.secrets.setup import build_backend
from app.secrets.values import opted_in_platform_refs
from app.tenancy.scope import TenantScope
from app.vectors.index import VectorIndex
from app.vectors.qdrant_server import Isolation
from app.vectors.setup import open_vector_index
from app.vectors.spaces import VectorSpaces

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class Resources:
    """The service's long-lived collaborators."""

    pool: asyncpg.Pool
    db_probe: ConnectProbe
    """Readiness: can a new Postgres connection be opened right now."""
    registry: TenantRegistry
    index: VectorIndex
    secrets: SecretsBackend
    secret_cache: SecretCache
    verifier: JwtVerifier
    audit: AuditWriter
    documents: DocumentService
    embedders: TenantEmbedders
    chat: ChatService
    dev_issuer: DevIssuer | None
    api_keys: ApiKeyStore
    key_admin: ApiKeyAdmin
    audit_reports: AuditReports
    service_tokens: ServiceTokenIssuer | None
    authenticator: Authenticator
    auth_failures: AuthFailureLog
    client_addresses: ClientAddressResolver
    limiter: RequestLimiter
    reconciled: asyncio.Task[ReconcileReport | None]
    """The start-up vector reconcile pass (in the background: readiness does not wait)."""


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """Open pool, registry, vector index, secrets, verifier and audit writer; close on exit."""
    async with AsyncExitStack() as stack:
        kek = load_master_key(settings)
        dsn = runtime_url(settings.db)
        pool = await create_pool(
            dsn,
            min_size=settings.db.pool_min,
            max_size=settings.db.pool_max,
            connect_timeout=settings.db.connect_timeout_seconds,
        )
        stack.push_async_callback(close_pool, pool, POOL_CLOSE_SECONDS)
        registry = TenantRegistry(pool)
        await registry.load()
        await registry.listen(dsn)
        stack.push_async_callback(registry.close)
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
        index = await stack.enter_async_context(
            open_vector_index(
                settings,
                secrets=secrets,
                secret_cache=secret_cache,
                tenant_ids=registry.tenant_ids,
                isolation_of=lambda tenant_id: _isolation(registry, tenant_id),
            )
        )
        spaces = VectorSpaces(
            index,
            # Dense spaces are Edge shards; server mode refuses dense embedders at apply time.
            settings.dense_vector_root if settings.vectors.backend == "edge" else None,
            search_threads=settings.vectors.search_threads,
        )
        stack.push_async_callback(spaces.close)
        registry.on_removed(lambda tenant_id: _purge_vectors(spaces, tenant_id))
        # Crash leftovers: committed versions never published, removed tenants' points.
        reconciled = asyncio.create_task(reconcile_at_start(pool, spaces))
        stack.push_async_callback(_cancel, reconciled)
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
            jwks=JwksCache(
                http=http,
                dev_issuer=dev_issuer,
                ttl_seconds=settings.auth.jwks_ttl_seconds,
                min_refetch_seconds=settings.auth.jwks_min_refetch_seconds,
            ),
            settings=settings.auth,
        )
        identity = await stack.enter_async_context(open_identity(settings, pool, dsn, kek))
        db_probe = ConnectProbe(
            dsn,
            timeout_seconds=settings.db.readiness_timeout_seconds,
            cache_seconds=settings.db.readiness_cache_seconds,
        )
        authenticator = Authenticator(
            registry=registry,
            jwt_verifier=verifier,
            api_keys=identity.api_keys,
            service_tokens=identity.service_tokens,
        )
        audit = AuditWriter(
            pool,
            buffer_size=settings.audit.buffer_size,
            batch_size=settings.audit.batch_size,
            flush_interval=settings.audit.flush_interval_seconds,
        )
        audit.start()
        # Closed before the pool (the stack unwinds in reverse): rows drain, then connections go.
        stack.push_async_callback(
            partial(audit.close, grace_seconds=settings.shutdown.audit_flush_seconds)
        )
        embedders = tenant_embedders(settings, registry, spaces, secret_cache)
        stack.push_async_callback(embedders.aclose)
        documents = DocumentService(
            pool=pool,
            index=index,
            limits=settings.limits,
            chunking=settings.chunking,
            redaction=lambda tenant_id: _redaction(registry, tenant_id),
            embedders=embedders,
        )
        chat = ChatService(
            pool=pool,
            documents=documents,
            registry=registry,
            cipher=ConversationCipher.from_settings(settings, kek),
            max_message_chars=settings.limits.max_query_chars,
            resolver=secret_cache,
            llm=settings.llm,
            chat=settings.chat,
        )
        stack.push_async_callback(chat.aclose)
        counters: CounterStore = (
            RedisCounters.from_url(settings.redis_url, pool)
            if settings.redis_url
            else PostgresCounters(pool)
        )
        limiter = RequestLimiter(
            counters, registry, sync_interval=settings.limits.rate_limit_sync_seconds
        )
        limiter.start()
        # Before the pool closes (the stack unwinds in reverse): the last counts are pushed.
        stack.push_async_callback(limiter.aclose)
        yield Resources(
            pool=pool,
            db_probe=db_probe,
            registry=registry,
            index=index,
            secrets=secrets,
            secret_cache=secret_cache,
            verifier=verifier,
            audit=audit,
            documents=documents,
            embedders=embedders,
            chat=chat,
            dev_issuer=dev_issuer,
            api_keys=identity.api_keys,
            key_admin=ApiKeyAdmin(pool, identity.api_keys),
            audit_reports=AuditReports(pool),
            service_tokens=identity.service_tokens,
            authenticator=authenticator,
            auth_failures=identity.auth_failures,
            client_addresses=ClientAddressResolver(settings.auth.trusted_proxies),
            limiter=limiter,
            reconciled=reconciled,
        )


POOL_CLOSE_SECONDS = 5.0
"""How long closing the pool waits for connections still checked out before cutting them."""


async def close_pool(pool: asyncpg.Pool, timeout_seconds: float) -> None:
    """Close the pool gracefully, or terminate its connections after `timeout_seconds`."""
    try:
        async with asyncio.timeout(timeout_seconds):
            await pool.close()
    except TimeoutError:
        _log.warning("closing the database pool took over %.0fs; terminating it", timeout_seconds)
        pool.terminate()


async def close_despite_outage(what: str, close: Callable[[], Awaitable[None]]) -> None:
    """Run a shutdown step that writes to Postgres; an unavailable database is only logged.

    Raises:
        Exception: Whatever `close` raised that is not an outage.
    """
    try:
        await close()
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        _log.warning("%s closed without reaching the database: %s", what, type(exc).__name__)


async def _cancel(task: asyncio.Task[ReconcileReport | None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def _isolation(registry: TenantRegistry, tenant_id: str) -> Isolation:
    record = registry.tenant(tenant_id)
    return record.manifest.retrieval.isolation if record else "shared"


def _redaction(registry: TenantRegistry, tenant_id: str) -> frozenset[RedactionKind]:
    record = registry.tenant(tenant_id)
    return parse_kinds(record.manifest.privacy.redact) if record else frozenset()


async def _purge_vectors(spaces: VectorSpaces, tenant_id: str) -> None:
    # This process holds the shards, so `bulkhead tenants offboard` cannot delete them itself.
    scope = TenantScope.system(tenant_id, actor="bulkhead:offboard")
    deleted = await spaces.delete_tenant(scope=scope)
    _log.info("tenant %r offboarded: deleted its %d vectors", tenant_id, deleted)


def _platform_refs(registry: TenantRegistry, tenant_id: str) -> frozenset[str]:
    record = registry.tenant(tenant_id)
    return opted_in_platform_refs(record.manifest if record else None)


@dataclass(slots=True)
class IdentityResources:
    """API key store, service-token issuer and the auth-failure log."""

    api_keys: ApiKeyStore
    service_tokens: ServiceTokenIssuer | None
    auth_failures: AuthFailureLog


@asynccontextmanager
async def open_identity(
    settings: Settings, pool: asyncpg.Pool, dsn: str, kek: bytes
) -> AsyncIterator[IdentityResources]:
    """Open the identity collaborators that listen or write in the background."""
    auth = settings.auth
    pepper = auth.api_key_pepper.encode() if auth.api_key_pepper else derive_pepper(kek)
    store = ApiKeyStore(
        pool,
        ApiKeyHasher(pepper),
        cache_seconds=auth.api_key_cache_seconds,
        flush_seconds=auth.api_key_last_used_flush_seconds,
    )
    service_tokens = ServiceTokenIssuer.from_files(
        settings.service_signing_key_path,
        auth.service_previous_key_files,
        create=settings.dev,
        issuer=auth.service_issuer,
        audience=auth.audience,
        ttl_seconds=auth.service_token_ttl_seconds,
        leeway_seconds=auth.leeway_seconds,
    )
    if service_tokens is None:
        _log.warning(
            "no service signing key at %s: token exchange (/v1/auth/token) is disabled",
            settings.service_signing_key_path,
        )
    failures = AuthFailureLog(pool)
    await store.start(dsn)
    failures.start()
    try:
        yield IdentityResources(
            api_keys=store, service_tokens=service_tokens, auth_failures=failures
        )
    finally:
        await failures.close(grace_seconds=settings.shutdown.audit_flush_seconds)
        await close_despite_outage("API key store", store.close)


def provide_documents(state: State) -> DocumentService:
    """DI: the document service."""
    resources: Resources = state.resources
    return resources.documents


def provide_chat(state: State) -> ChatService:
    """DI: the chat service."""
    resources: Resources = state.resources
    return resources.chat


def provide_key_admin(state: State) -> ApiKeyAdmin:
    """DI: the tenant admins' API key operations."""
    resources: Resources = state.resources
    return resources.key_admin


def provide_audit_reports(state: State) -> AuditReports:
    """DI: the usage report and the audit export."""
    resources: Resources = state.resources
    return resources.audit_reports


def provide_service_tokens(state: State) -> ServiceTokenIssuer | None:
    """DI: the service-token issuer (None when token exchange is off)."""
    resources: Resources = state.resources
    return resources.service_tokens
