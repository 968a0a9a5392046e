"""OpenBao / HashiCorp Vault backend: KV v2 reads on the event loop, the rest through hvac.

The hot path, a KV v2 read on a secret cache miss, is one GET on a persistent keep-alive
`httpx.AsyncClient`: no worker-thread hop, no per-call setup (`python -m benchmarks.secrets`
shows it next to the hvac-in-a-thread read and the server's floor). hvac (synchronous,
requests) keeps everything else: token lookup, AppRole login and renewal, writes, deletes,
listing, Transit; those run in a worker thread, never on the event loop.

A ref `tenants/acme/openai` is stored at `<mount>/data/tenants/acme/openai` as `{"value": ...}`,
so a Vault policy on `tenants/acme/*` can mirror Bulkhead's own rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import hvac
import hvac.exceptions
import requests

from app.secrets.backend import GuardedBackend, SecretNotFound, SecretsBackendUnavailable
from app.secrets.values import SecretRef, SecretValue

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from app.config import VaultSettings
    from app.tenancy.scope import TenantScope

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Renew (or log in again) once a token has less than this share of its lifetime left.
_RENEW_FRACTION = 1 / 3
_TRANSPORT = (requests.exceptions.RequestException, OSError)


class VaultSecretsBackend(GuardedBackend):
    """`SecretsBackend` over a KV v2 mount of OpenBao or Vault.

    Args:
        settings: Address, auth and mount.
        client: An hvac client to use instead of building one (tests).
    """

    name = "vault"

    def __init__(self, settings: VaultSettings, *, client: hvac.Client | None = None) -> None:
        self.connection = VaultConnection(settings, client=client)
        self._mount = settings.mount

    # --- SecretsBackend ------------------------------------------------------------------

    async def _read(
        self, ref: SecretRef, *, scope: TenantScope, version: int | None
    ) -> SecretValue:
        """The latest (or the given) version of `ref`.

        Raises:
            SecretNotFound: Nothing (or no live version) under `ref`.
            SecretsBackendUnavailable: Vault is unreachable, sealed, or refuses our token.
        """
        response = await self.connection.read(
            f"{self._mount}/data/{ref}", params={"version": version} if version else None
        )
        # KV v2 answers 404 for a missing ref and for a deleted or destroyed version alike.
        if response is None:
            raise SecretNotFound(f"no secret stored under '{ref}'")
        data = response["data"]["data"] or {}
        if "value" not in data:
            raise SecretNotFound(f"no secret stored under '{ref}'")
        return SecretValue(str(data["value"]))

    async def _write(self, ref: SecretRef, value: SecretValue, *, scope: TenantScope) -> int:
        """Write a new KV v2 version of `ref` and return its number.

        Raises:
            SecretsBackendUnavailable: Vault is unreachable, sealed, or refuses our token.
        """
        response = await self._call(
            lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=str(ref), secret={"value": value.reveal()}, mount_point=self._mount
            ),
            ref=ref,
        )
        return int(response["data"]["version"])

    async def _remove(self, ref: SecretRef, *, scope: TenantScope) -> bool:
        """Destroy every version and the metadata of `ref`.

        Raises:
            SecretsBackendUnavailable: Vault is unreachable, sealed, or refuses our token.
        """
        try:
            await self._call(
                lambda c: c.secrets.kv.v2.read_secret_metadata(
                    path=str(ref), mount_point=self._mount
                ),
                ref=ref,
            )
        except SecretNotFound:
            return False
        await self._call(
            lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(
                path=str(ref), mount_point=self._mount
            ),
            ref=ref,
        )
        return True

    async def list(self, *, scope: TenantScope) -> list[tuple[SecretRef, int]]:
        """The tenant's refs (under `tenants/<id>/`) with their current versions.

        Raises:
            SecretsBackendUnavailable: Vault is unreachable, sealed, or refuses our token.
        """
        prefix = f"tenants/{scope.tenant_id}"
        try:
            listed = await self._call(
                lambda c: c.secrets.kv.v2.list_secrets(path=prefix, mount_point=self._mount),
                ref=None,
            )
        except SecretNotFound:
            return []
        result: list[tuple[SecretRef, int]] = []
        for key in sorted(listed["data"]["keys"]):
            if key.endswith("/"):
                continue
            ref = SecretRef(tenant_id=scope.tenant_id, name=key)
            metadata = await self._call(partial(self._metadata, str(ref)), ref=ref)
            result.append((ref, int(metadata["data"]["current_version"])))
        return result

    def _metadata(self, path: str, client: hvac.Client) -> Any:
        return client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=self._mount)

    async def health(self) -> bool:
        """Whether Vault is initialized, unsealed and reachable."""
        try:
            return bool(await self._run(lambda c: c.sys.is_initialized() and not c.sys.is_sealed()))
        except Exception:
            return False

    async def close(self) -> None:
        """Stop the worker threads and close the HTTP session."""
        await self.connection.close()

    async def _run(self, function: Callable[[hvac.Client], _T]) -> _T:
        return await self.connection.run(function)

    async def _call(self, operation: Callable[[hvac.Client], Any], *, ref: SecretRef | None) -> Any:
        try:
            return await self.connection.call(operation)
        except hvac.exceptions.InvalidPath:
            raise SecretNotFound(f"no secret stored under '{ref}'") from None


class VaultConnection:
    """An hvac client with its token kept alive, driven from worker threads.

    Token auth uses the token as given (looked up once for its TTL, renewed when renewable).
    AppRole logs in on first use, renews past two thirds of the token's lifetime, and logs in
    again when renewal fails or Vault answers 403 (a revoked or expired token), once per call.
    Shared by the KV backend and the Transit key wrapper.

    Raises (from `call`):
        SecretsBackendUnavailable: Vault is unreachable, sealed, failing, or refuses our token.
    """

    def __init__(self, settings: VaultSettings, *, client: hvac.Client | None = None) -> None:
        if client is None and not settings.token and not (settings.role_id and settings.secret_id):
            raise ValueError(
                "vault backend needs BULKHEAD_SECRETS__VAULT__TOKEN, or __ROLE_ID and __SECRET_ID"
            )
        self._settings = settings
        self.client = client or hvac.Client(
            url=settings.addr,
            token=settings.token,
            namespace=settings.namespace,
            timeout=settings.timeout_seconds,
            verify=str(settings.ca_cert) if settings.ca_cert else True,
        )
        # Several threads share the client; only one renews or logs in at a time.
        self._auth_lock = threading.Lock()
        self.expires_at: float | None = None  # None: a token that never expires (root, dev)
        self._ttl = 0.0
        self._renewable = False
        self._authenticated = False
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bulkhead-vault")
        # Built on the first KV read (the Transit wrapper shares this class and never reads).
        self._http: httpx.AsyncClient | None = None

    def _reader(self) -> httpx.AsyncClient:
        if self._http is None:
            settings = self._settings
            headers = {"X-Vault-Namespace": settings.namespace} if settings.namespace else {}
            self._http = httpx.AsyncClient(
                base_url=f"{self.client.adapter.base_uri.rstrip('/')}/v1/",
                headers=headers,
                timeout=settings.timeout_seconds,
                verify=ssl.create_default_context(cafile=settings.ca_cert)
                if settings.ca_cert
                else True,
            )
        return self._http

    async def read(self, path: str, *, params: dict[str, int] | None = None) -> Any:
        """GET `/v1/<path>` on the event loop with a live token; None when Vault answers 404.

        Raises:
            SecretsBackendUnavailable: Vault is unreachable, sealed, failing, or refuses our
                token (after one fresh AppRole login, when AppRole is configured).
        """
        if not self._token_fresh():
            with _outages():
                await self.run(lambda _: self._ensure_token())
        response = await self._get(path, params)
        if response.status_code == httpx.codes.FORBIDDEN and self._can_login():
            # The token may have been revoked or expired under us: log in again, once.
            with _outages():
                await self.run(lambda _: self._login())
            response = await self._get(path, params)
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.status_code == httpx.codes.FORBIDDEN:
            raise SecretsBackendUnavailable(f"vault refused the token: Forbidden (GET {path})")
        if response.status_code != httpx.codes.OK:
            raise SecretsBackendUnavailable(
                f"vault unavailable: HTTP {response.status_code} (GET {path})"
            )
        return response.json()

    async def _get(self, path: str, params: dict[str, int] | None) -> httpx.Response:
        try:
            return await self._reader().get(
                path, params=params, headers={"X-Vault-Token": self.client.token or ""}
            )
        except (httpx.HTTPError, OSError) as exc:
            raise SecretsBackendUnavailable(f"vault unreachable: {type(exc).__name__}") from None

    async def call(self, operation: Callable[[hvac.Client], _T]) -> _T:
        """Run `operation(client)` in a worker thread with a live token.

        Raises:
            hvac.exceptions.InvalidPath: Not found (callers map it).
            hvac.exceptions.InvalidRequest: Refused as invalid (callers map it).
            SecretsBackendUnavailable: Any outage, including a refused token.
        """
        with _outages():
            return await self.run(partial(self._authenticated_call, operation))

    async def run(self, function: Callable[[hvac.Client], _T]) -> _T:
        """Run `function(client)` in a worker thread, without touching the token."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, self.client)

    async def close(self) -> None:
        """Stop the worker threads and close the HTTP sessions."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.client.adapter.close()
        if self._http is not None:
            await self._http.aclose()

    def _authenticated_call(
        self, operation: Callable[[hvac.Client], _T], client: hvac.Client
    ) -> _T:
        self._ensure_token()
        try:
            return operation(client)
        except hvac.exceptions.Forbidden:
            if not self._can_login():
                raise
            # The token may have been revoked or expired under us: log in again, once.
            self._login()
            return operation(client)

    def _can_login(self) -> bool:
        return bool(self._settings.role_id and self._settings.secret_id)

    def _token_fresh(self) -> bool:
        return self._authenticated and (self.expires_at is None or not self._due())

    def _ensure_token(self) -> None:
        if self._token_fresh():
            return
        with self._auth_lock:
            if not self._authenticated:
                if self._settings.token:
                    self._adopt(self.client.auth.token.lookup_self()["data"])
                else:
                    self._login()
                return
            if self.expires_at is None or not self._due():
                return
            if self._renewable:
                try:
                    self._adopt_auth(self.client.auth.token.renew_self()["auth"])
                    return
                except hvac.exceptions.VaultError:
                    _log.warning("vault token renewal failed; logging in again")
            if self._can_login():
                self._login()

    def _due(self) -> bool:
        assert self.expires_at is not None  # noqa: S101 - callers checked
        return self.expires_at - time.monotonic() < self._ttl * _RENEW_FRACTION

    def _login(self) -> None:
        response = self.client.auth.approle.login(
            role_id=self._settings.role_id,
            secret_id=self._settings.secret_id,
            mount_point=self._settings.approle_mount,
        )
        self._adopt_auth(response["auth"])

    def _adopt_auth(self, auth: dict[str, Any]) -> None:
        self.client.token = auth["client_token"]
        self._set_lifetime(int(auth.get("lease_duration") or 0), bool(auth.get("renewable")))

    def _adopt(self, data: dict[str, Any]) -> None:
        self._set_lifetime(int(data.get("ttl") or 0), bool(data.get("renewable")))

    def _set_lifetime(self, ttl: int, renewable: bool) -> None:
        self._authenticated = True
        self._renewable = renewable
        self._ttl = float(ttl)
        self.expires_at = time.monotonic() + ttl if ttl > 0 else None


@contextlib.contextmanager
def _outages() -> Iterator[None]:
    """Map hvac and transport failures to `SecretsBackendUnavailable` (not found passes)."""
    try:
        yield
    except hvac.exceptions.Forbidden as exc:
        # Our own token was refused even after a fresh login: an outage of our access.
        raise SecretsBackendUnavailable(f"vault refused the token: {_status(exc)}") from None
    except (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError) as exc:
        raise SecretsBackendUnavailable(f"vault unavailable: {_status(exc)}") from None
    except _TRANSPORT as exc:
        raise SecretsBackendUnavailable(f"vault unreachable: {type(exc).__name__}") from None


def _status(exc: hvac.exceptions.VaultError) -> str:
    # hvac puts the server's error list in the message; it never holds our token.
    return f"{type(exc).__name__} ({getattr(exc, 'method', '')} {getattr(exc, 'url', '')})"
