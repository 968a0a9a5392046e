"""`bulkhead vectors reconcile`: repair the vector store after a crash (see `reconcile.py`)."""

from __future__ import annotations

import asyncio

import click

from app.config import Settings, get_settings
from app.db.pool import create_pool
from app.retrieval.reconcile import ReconcileReport, reconcile
from app.vectors.edge import EdgeIndex
from app.vectors.spaces import VectorSpaces


@click.group()
def vectors() -> None:
    """Maintain the vector store."""


@vectors.command("reconcile")
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant id.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=256, show_default=True)
def reconcile_command(tenant_id: str | None, batch_size: int) -> None:
    """Publish committed versions a crash left pending; delete removed tenants' points.

    The service runs the same pass at start-up. With the embedded Qdrant Edge store, run it
    while the service is stopped (one process per shard directory). A `--tenant` without a
    tenants row has its points deleted.
    """
    settings = get_settings()
    if settings.vectors.backend != "edge":
        raise click.ClickException(
            "the command needs the Qdrant Edge backend; with the server backend the service's "
            "start-up pass publishes pending versions"
        )
    report = asyncio.run(_run(settings, tenant_id, batch_size))
    click.echo(
        f"published {report.published} pending versions, discarded {report.discarded}; "
        f"deleted {report.orphan_points} points of {len(report.orphan_tenants)} removed "
        f"tenants{': ' + ', '.join(report.orphan_tenants) if report.orphan_tenants else ''}"
    )


async def _run(settings: Settings, tenant_id: str | None, batch_size: int) -> ReconcileReport:
    # Imported here: resources imports the whole service (Litestar) for one helper.
    from app.db.urls import runtime_url

    pool = await create_pool(runtime_url(settings.db), min_size=1, max_size=2)
    bm25 = EdgeIndex.open(settings.vector_path, search_threads=settings.vectors.search_threads)
    spaces = VectorSpaces(
        bm25, settings.dense_vector_root, search_threads=settings.vectors.search_threads
    )
    try:
        return await reconcile(pool, spaces, tenant_id=tenant_id, batch_size=batch_size)
    finally:
        await spaces.close()
        await bm25.close()
        await pool.close()
