"""The clients `QdrantServerIndex` sends a scope's requests through.

`ScopedKeyClients` (server mode) builds one client per tenant from the tenant's own JWT,
resolved through the secret cache; the cluster key never reaches a request path.
`SharedClient` serves qdrant-client's local mode (tests, dev) and an unauthenticated dev server,
where there is no key to scope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from app.problems import ApiError
from app.secrets.backend import SecretNotFound
from app.secrets.cache import SecretCache
from app.secrets.values import SecretValue
from app.tenancy.scope import TenantScope
from app.vectors.qdrant_keys import jwt_ref

_log = logging.getLogger(__name__)
T = TypeVar("T")
_REFUSED_GRPC = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _refused(exc: Exception) -> bool:
    """Whether the server refused the credential (REST 401/403, gRPC equivalents)."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (401, 403)
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _REFUSED_GRPC


class VectorKeyMissing(ApiError):
    """The tenant has no Qdrant key yet (not onboarded in server mode, or being re-minted)."""

    status, code, title = 503, "vectors_unavailable", "Vector store unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


async def _answers(client: AsyncQdrantClient) -> bool:
    try:
        await client.get_collections()
    except Exception:
        return False
    return True


class SharedClient:
    """One client for every tenant: local mode or a dev server without authentication."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        self._client = client

    async def for_scope(self, scope: TenantScope) -> AsyncQdrantClient:
        """The one client (rows are isolated by the forced filter alone)."""
        return self._client

    async def run(self, scope: TenantScope, call: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        """`call` with the one client."""
        return await call(self._client)

    async def health(self) -> bool:
        """The store answers a collection listing."""
        return await _answers(self._client)

    async def close(self) -> None:
        """Close the client."""
        await self._client.close()


class ScopedKeyClients:
    """Per-tenant clients authenticated with the tenant's scoped JWT.

    Args:
        url: The Qdrant server.
        secrets: The request path's secret cache; a re-minted key reaches it within its TTL.
        monitor: A client used only for health checks.
        prefer_grpc: Use gRPC for data calls.
        timeout: Per-call timeout in seconds.
    """

    def __init__(
        self,
        *,
        url: str,
        secrets: SecretCache,
        monitor: AsyncQdrantClient,
        prefer_grpc: bool = False,
        timeout: int = 10,
    ) -> None:
        self._url = url
        self._secrets = secrets
        self._monitor = monitor
        self._prefer_grpc = prefer_grpc
        self._timeout = timeout
        self._clients: dict[str, tuple[SecretValue, AsyncQdrantClient]] = {}
        self._retired: list[AsyncQdrantClient] = []

    async def for_scope(self, scope: TenantScope) -> AsyncQdrantClient:
        """The tenant's client, rebuilt when its stored key changes.

        Raises:
            VectorKeyMissing: No key is stored for the tenant.
            SecretsUnavailable: The secrets backend is down past the allowed staleness.
        """
        try:
            token = await self._secrets.get(jwt_ref(scope.tenant_id), scope=scope)
        except SecretNotFound:
            raise VectorKeyMissing(
                "the tenant's vector store key is not provisioned; apply its manifest"
            ) from None
        return self._client_for(scope.tenant_id, token)

    async def run(self, scope: TenantScope, call: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        """`call` with the tenant's client; once more with a newer key if the server refuses.

        A re-mint or `rotate-vector-key` reaches this replica's cache within its TTL; a
        request in between is refused by the server, refetches the key and retries once.

        Raises:
            VectorKeyMissing: No key is stored for the tenant.
            UnexpectedResponse: The server refused the current key too (or failed otherwise).
        """
        client = await self.for_scope(scope)
        try:
            return await call(client)
        except Exception as exc:
            if not _refused(exc):
                raise
            ref = jwt_ref(scope.tenant_id)
            rejected = self._clients[scope.tenant_id][0]
            try:
                fresh = await self._secrets.refetch_rejected(ref, rejected, scope=scope)
            except SecretNotFound:
                fresh = None
            if fresh is None:
                raise
            _log.info(
                "Qdrant refused tenant %s's key; retrying with the newer one", scope.tenant_id
            )
            return await call(self._client_for(scope.tenant_id, fresh))

    def _client_for(self, tenant_id: str, token: SecretValue) -> AsyncQdrantClient:
        cached = self._clients.get(tenant_id)
        if cached is not None and cached[0] == token:
            return cached[1]
        client = AsyncQdrantClient(
            url=self._url,
            api_key=token.reveal(),
            prefer_grpc=self._prefer_grpc,
            timeout=self._timeout,
            # The monitor (cluster key) checks server/client versions once per process.
            check_compatibility=False,
        )
        if cached is not None:
            # Requests in flight may still hold it; closed at shutdown.
            self._retired.append(cached[1])
        self._clients[tenant_id] = (token, client)
        return client

    async def health(self) -> bool:
        """The server answers the monitor client."""
        return await _answers(self._monitor)

    async def close(self) -> None:
        """Close every tenant client and the monitor."""
        for client in [*(c for _, c in self._clients.values()), *self._retired]:
            await client.close()
        self._clients.clear()
        self._retired.clear()
        await self._monitor.close()
