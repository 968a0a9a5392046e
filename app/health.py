"""Liveness, readiness, and the dev issuer's JWKS (registered in dev mode only)."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State

from app.resources import Resources

READINESS_TIMEOUT_SECONDS = 2.0


async def _check(probe: Any) -> str:
    try:
        ok = await asyncio.wait_for(probe, READINESS_TIMEOUT_SECONDS)
    except Exception:
        return "down"
    return "ok" if ok else "down"


async def _db_ok(resources: Resources) -> bool:
    # A new connection, not a pooled one: see app/db/readiness.py.
    return await resources.db_probe.ok()


class HealthController(Controller):
    """`/healthz` and `/readyz`."""

    @get("/healthz", opt={"exclude_from_auth": True})
    async def healthz(self) -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @get("/readyz", opt={"exclude_from_auth": True})
    async def readyz(self, state: State) -> Response[dict[str, Any]]:
        """Every dependency answers: 200, else 503 with the failing component named.

        `db` is down as soon as Postgres refuses a new connection (stopped, restarting, in
        a smart shutdown, out of connection slots), within about a second.
        """
        resources: Resources = state.resources
        db, vectors, secrets = await asyncio.gather(
            _check(_db_ok(resources)),
            _check(resources.index.health()),
            _check(resources.secrets.health()),
        )
        components = {"db": db, "vectors": vectors, "secrets": secrets}
        ready = all(status == "ok" for status in components.values())
        return Response(
            {"status": "ok" if ready else "unavailable", "components": components},
            status_code=200 if ready else 503,
        )


class DevJwksController(Controller):
    """The dev issuer's public keys; mounted only when `BULKHEAD_DEV` is on."""

    @get("/dev/jwks.json", opt={"exclude_from_auth": True})
    async def jwks(self, state: State) -> dict[str, Any]:
        """The dev issuer's JWKS."""
        resources: Resources = state.resources
        if resources.dev_issuer is None:  # pragma: no cover - route exists only in dev
            return {"keys": []}
        return resources.dev_issuer.jwks()
