"""create_app(): wires plugins, routers, lifespan, dependencies and exception handlers."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

from app.audit.controllers import AuditController, UsageController
from app.audit.middleware import AuditMiddleware
from app.chat.completions import CompletionsController
from app.chat.controllers import ChatController
from app.chat.conversation_controllers import ConversationController, UserDataController
from app.config import Settings, get_settings
from app.edge.errors import EXCEPTION_HANDLERS as EDGE_EXCEPTION_HANDLERS
from app.edge.guards import provide_scope, tenant_header_guard
from app.edge.handlers import EXCEPTION_HANDLERS
from app.edge.middleware import InputBoundaryMiddleware
from app.health import DevJwksController, HealthController
from app.identity.controllers import ApiKeyController, ServiceJwksController, TokenController
from app.identity.middleware import BearerAuthMiddleware
from app.limits.middleware import RateLimitMiddleware
from app.openapi.document import SCHEMA_PATH, openapi_config
from app.resources import (
    open_resources,
    provide_audit_reports,
    provide_chat,
    provide_documents,
    provide_key_admin,
    provide_service_tokens,
)
from app.retrieval.controllers import DocumentController, SearchController
from app.retrieval.corpus import seed_demo_corpus
from app.secrets.scrub import install_scrubbing
from app.telemetry.headers import add_trace_header
from app.telemetry.setup import (
    configure_metrics,
    configure_tracing,
    quiet_per_request_loggers,
)


def _version() -> str:
    try:
        return importlib.metadata.version("bulkhead")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "0.0.0"


def _cors(settings: Settings) -> CORSConfig | None:
    """CORS for the configured origins only; none configured (the default) means none at all."""
    origins = settings.http.cors_allowed_origins
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["authorization", "content-type", "x-tenant-id"],
        expose_headers=["x-trace-id", "retry-after", "ratelimit", "ratelimit-policy"],
        allow_credentials=False,
        max_age=600,
    )


PUBLIC_PATHS = [
    "^/healthz$",
    "^/readyz$",
    "^/dev/jwks.json$",
    "^/.well-known/jwks.json$",
    f"^{SCHEMA_PATH}(/|$)",
]


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the Bulkhead ASGI application."""
    settings = settings or get_settings()
    install_scrubbing()
    quiet_per_request_loggers()
    provider = configure_tracing(settings.telemetry)
    configure_metrics(settings.telemetry)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            app.state.verifier = resources.verifier
            app.state.authenticator = resources.authenticator
            app.state.auth_failures = resources.auth_failures
            app.state.client_addresses = resources.client_addresses
            app.state.audit = resources.audit
            if settings.dev:
                await seed_demo_corpus(
                    resources.documents, resources.registry.tenant_ids(), settings
                )
            yield
        provider.force_flush()

    routes = [HealthController, DocumentController, SearchController, ChatController]
    routes += [CompletionsController, ConversationController, UserDataController]
    routes += [ApiKeyController, TokenController, ServiceJwksController, UsageController]
    routes.append(AuditController)
    if settings.dev:
        routes.append(DevJwksController)
    return Litestar(
        route_handlers=routes,
        lifespan=[lifespan],
        middleware=[
            DefineMiddleware(AuditMiddleware),
            DefineMiddleware(
                BearerAuthMiddleware,
                exclude=PUBLIC_PATHS,
                max_header_bytes=settings.auth.max_authorization_header_bytes,
            ),
            # After authentication, before any handler work: the caller is known, nothing spent.
            DefineMiddleware(RateLimitMiddleware),
            # Then the input boundary: nothing a handler sees can be unstorable or unbounded.
            DefineMiddleware(
                InputBoundaryMiddleware,
                http=settings.http,
                max_json_bytes=settings.limits.max_request_bytes,
            ),
        ],
        plugins=[
            OpenTelemetryPlugin(
                # Per-message `http send/receive` spans triple the span count of every request
                # and tell an SRE nothing the server span does not.
                OpenTelemetryConfig(tracer_provider=provider, exclude_spans=["receive", "send"])
            )
        ],
        dependencies={
            "caller": Provide(provide_scope, sync_to_thread=False),
            "documents": Provide(provide_documents, sync_to_thread=False),
            "chat": Provide(provide_chat, sync_to_thread=False),
            "key_admin": Provide(provide_key_admin, sync_to_thread=False),
            "audit_reports": Provide(provide_audit_reports, sync_to_thread=False),
            "service_tokens": Provide(provide_service_tokens, sync_to_thread=False),
        },
        guards=[tenant_header_guard],
        exception_handlers={**EXCEPTION_HANDLERS, **EDGE_EXCEPTION_HANDLERS},
        before_send=[add_trace_header],
        request_max_body_size=settings.limits.max_request_bytes,
        # Read by the exception handler that answers 503 `database_unavailable`.
        state=State({"database_retry_after": settings.db.retry_after_seconds}),
        cors_config=_cors(settings),
        debug=False,
        openapi_config=openapi_config(settings, version=_version()),
    )
