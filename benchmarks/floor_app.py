"""The floor: a bare Litestar app whose one handler returns a constant.

Served by the same uvicorn command line as Bulkhead, it measures what the framework, the server
and the load generator cost on this machine, so every Bulkhead figure can be read relative to it.
"""

from __future__ import annotations

from litestar import Litestar, get


@get("/floor")
async def floor() -> dict[str, str]:
    """A constant body, as `/healthz` returns."""
    return {"status": "ok"}


def create_app() -> Litestar:
    """Build the floor app (uvicorn `--factory` entry point)."""
    return Litestar(route_handlers=[floor], openapi_config=None, debug=False)
