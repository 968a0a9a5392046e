"""HTTP endpoints of identity: API key admin, token exchange, Bulkhead's public JWKS."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.edge.guards import requires
from app.identity import api_keys
from app.identity.key_admin import ApiKeyAdmin
from app.identity.schemas import (
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    ApiKeyRotated,
    CreateApiKey,
    RotateApiKey,
    TokenResponse,
)
from app.identity.service_tokens import ServiceTokenIssuer
from app.problems import Forbidden, ServiceUnavailable
from app.tenancy.scope import Role, TenantScope


def _out(info: api_keys.ApiKeyInfo) -> ApiKeyOut:
    return ApiKeyOut(**asdict(info))


class ApiKeyController(Controller):
    """`/v1/admin/api-keys`: create (shown once), list, rotate with grace, revoke."""

    path = "/v1/admin/api-keys"
    guards = [requires(Role.ADMIN)]

    @post(status_code=HTTP_201_CREATED)
    async def create(
        self,
        data: JSONBody[CreateApiKey],
        caller: NamedDependency[TenantScope],
        key_admin: NamedDependency[ApiKeyAdmin],
    ) -> ApiKeyCreated:
        """Create a key for the caller's tenant."""
        created = await key_admin.create(
            caller,
            name=data.name,
            scopes=data.scopes,
            expires_at=data.expires_at,
            allowed_cidrs=data.allowed_cidrs,
        )
        return ApiKeyCreated(key=created.key, api_key=_out(created.info))

    @get()
    async def list_keys(
        self, caller: NamedDependency[TenantScope], key_admin: NamedDependency[ApiKeyAdmin]
    ) -> ApiKeyList:
        """The tenant's keys, without secrets."""
        return ApiKeyList(api_keys=[_out(k) for k in await key_admin.list_keys(caller)])

    @post("/{key_id:str}/rotate", status_code=HTTP_201_CREATED)
    async def rotate(
        self,
        key_id: FromPath[str],
        data: JSONBody[RotateApiKey],
        caller: NamedDependency[TenantScope],
        key_admin: NamedDependency[ApiKeyAdmin],
    ) -> ApiKeyRotated:
        """Issue a successor; the old key works until the grace period ends."""
        created, previous = await key_admin.rotate(caller, key_id, grace_seconds=data.grace_seconds)
        return ApiKeyRotated(key=created.key, api_key=_out(created.info), previous=_out(previous))

    @delete("/{key_id:str}", status_code=HTTP_204_NO_CONTENT)
    async def revoke(
        self,
        key_id: FromPath[str],
        caller: NamedDependency[TenantScope],
        key_admin: NamedDependency[ApiKeyAdmin],
    ) -> None:
        """Revoke a key on every replica at once."""
        await key_admin.revoke(caller, key_id)


class TokenController(Controller):
    """`POST /v1/auth/token`: trade a service API key for a short-lived JWT."""

    path = "/v1/auth/token"

    @post(status_code=HTTP_200_OK, cache_control=CacheControlHeader(no_store=True))
    async def exchange(
        self,
        request: Request[TenantScope, Any, Any],
        service_tokens: NamedDependency[ServiceTokenIssuer | None],
    ) -> TokenResponse:
        """Exchange the presented API key (only an API key) for a service token."""
        caller = request.user
        issuer = service_tokens
        if issuer is None:
            raise ServiceUnavailable("token exchange is not configured on this server")
        if not caller.credential_id.startswith("apikey:"):
            raise Forbidden("only a service API key can be exchanged for a token")
        key_id = caller.credential_id.removeprefix("apikey:")
        token = issuer.mint(
            tenant_id=caller.tenant_id, key_id=key_id, roles=sorted(r.value for r in caller.roles)
        )
        return TokenResponse(
            access_token=token,
            token_type="Bearer",  # noqa: S106 - an auth scheme name, not a password
            expires_in=issuer.ttl_seconds,
        )


class ServiceJwksController(Controller):
    """`GET /.well-known/jwks.json`: the keys that sign Bulkhead's service tokens."""

    path = "/.well-known/jwks.json"

    @get(cache_control=None)
    async def jwks(
        self, service_tokens: NamedDependency[ServiceTokenIssuer | None]
    ) -> dict[str, Any]:
        """Public signing keys (current and still-valid previous ones)."""
        return service_tokens.jwks() if service_tokens is not None else {"keys": []}
