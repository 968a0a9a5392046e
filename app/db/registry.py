"""In-memory view of the tenant registry (tenants and their issuers), kept fresh by NOTIFY.

Authentication looks a token's issuer up here on every request, so the lookup is a dict read,
never a query. `bulkhead tenants apply` sends `NOTIFY bulkhead_tenants`; every replica reloads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from app.db.pool import platform_transaction
from app.tenancy.manifest import TenantManifest

CHANNEL = "bulkhead_tenants"

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuerBinding:
    """One issuer's mapping to one tenant (docs/architecture.md, Isolation)."""

    tenant_id: str
    issuer: str
    audience: str
    jwks_uri: str | None
    tenant_claim: str | None
    tenant_claim_value: str | None
    roles_claim: str
    groups_claim: str


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """An onboarded tenant."""

    id: str
    name: str
    active: bool
    manifest: TenantManifest


class TenantRegistry:
    """Tenants and issuers by id, reloaded whenever the registry changes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._tenants: dict[str, TenantRecord] = {}
        self._bindings: dict[str, tuple[IssuerBinding, ...]] = {}
        self._listener: asyncpg.Connection | None = None
        self._reload_lock = asyncio.Lock()
        self._dsn = ""
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._on_removed: list[Callable[[str], Awaitable[None]]] = []

    def on_removed(self, callback: Callable[[str], Awaitable[None]]) -> None:
        """Run `callback(tenant_id)` after a reload finds an onboarded tenant gone (offboarded)."""
        self._on_removed.append(callback)

    async def load(self) -> None:
        """Read every tenant and issuer from the platform tables."""
        async with self._reload_lock, platform_transaction(self._pool) as connection:
            tenant_rows = await connection.fetch("SELECT id, name, status, manifest FROM tenants")
            issuer_rows = await connection.fetch(
                "SELECT tenant_id, issuer, audience, jwks_uri, tenant_claim, tenant_claim_value,"
                " roles_claim, groups_claim FROM issuers"
            )
        tenants = {
            row["id"]: TenantRecord(
                id=row["id"],
                name=row["name"],
                active=row["status"] == "active",
                manifest=msgspec.convert(row["manifest"], TenantManifest),
            )
            for row in tenant_rows
        }
        bindings: dict[str, list[IssuerBinding]] = {}
        for row in issuer_rows:
            binding = IssuerBinding(**dict(row))
            bindings.setdefault(binding.issuer, []).append(binding)
        removed = self._tenants.keys() - tenants.keys()
        self._tenants = tenants
        self._bindings = {issuer: tuple(items) for issuer, items in bindings.items()}
        for tenant_id in sorted(removed):
            for callback in self._on_removed:
                try:
                    await callback(tenant_id)
                except Exception:  # one failing cleanup must not stop the others
                    _log.exception("cleanup after tenant %r was removed failed", tenant_id)

    async def listen(self, dsn: str) -> None:
        """Reload on every `NOTIFY bulkhead_tenants` until `close()`.

        A lost listener connection is re-established in the background, and the registry is
        reloaded once it is back, so a change announced meanwhile is not missed for good.
        """
        self._dsn = dsn
        listener = await asyncpg.connect(dsn)
        await listener.add_listener(CHANNEL, self._on_notify)
        listener.add_termination_listener(self._on_listener_lost)
        self._listener = listener

    def _on_notify(self, *_: Any) -> None:
        task = asyncio.get_running_loop().create_task(self.load())
        task.add_done_callback(_log_reload_failure)

    def _on_listener_lost(self, _connection: Any) -> None:
        _log.error("tenant registry listener connection lost; reconnecting")
        self._listener = None
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        while self._listener is None and not self._closing:
            try:
                await self.listen(self._dsn)
                await self.load()
                _log.info("tenant registry listener reconnected")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        """Stop listening."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._listener is not None:
            self._listener.remove_termination_listener(self._on_listener_lost)
            await self._listener.close()
            self._listener = None

    def tenant(self, tenant_id: str) -> TenantRecord | None:
        """The tenant with this id, if onboarded."""
        return self._tenants.get(tenant_id)

    def bindings(self, issuer: str) -> tuple[IssuerBinding, ...]:
        """Every tenant binding of an issuer (several when the issuer is shared)."""
        return self._bindings.get(issuer, ())

    def tenant_ids(self) -> list[str]:
        """Ids of all onboarded tenants."""
        return sorted(self._tenants)


def _log_reload_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("tenant registry reload failed", exc_info=task.exception())
