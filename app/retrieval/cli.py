"""`bulkhead reindex`: move a tenant to another embedder (see `app/retrieval/reindex.py`)."""

from __future__ import annotations

import asyncio

import click

from app.config import Settings, get_settings
from app.db.pool import connect, create_pool
from app.db.registry import TenantRegistry
from app.problems import ApiError
from app.retrieval.reindex import ReindexConflict, ReindexReport, reindex_tenant
from app.secrets.cache import SecretCache
from app.secrets.kek import MasterKeyError, load_master_key
from app.secrets.setup import build_backend
from app.secrets.values import opted_in_platform_refs
from app.tenancy.embedder_spec import EmbedderSpec
from app.tenancy.manifest import ManifestError
from app.vectors.edge import EdgeIndex
from app.vectors.spaces import VectorSpaces


@click.command()
@click.option("--tenant", "tenant_id", required=True, help="Tenant id.")
@click.option(
    "--embedder",
    required=True,
    help="bm25 | openai:<model>[/<dims>] | hybrid:openai:<model>[/<dims>]",
)
@click.option("--batch-size", type=click.IntRange(1, 2048), default=256, show_default=True)
@click.option(
    "--grace-seconds",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="Wait after the switch before deleting the old vectors (replicas hear the NOTIFY).",
)
def reindex(tenant_id: str, embedder: str, batch_size: int, grace_seconds: float) -> None:
    """Re-embed a tenant's chunks with another embedder, then switch to it atomically.

    Search keeps answering from the old vectors until the switch. Safe to re-run: an
    interrupted run resumes, skipping chunks already embedded. With the embedded Qdrant Edge
    store, run it while the service is stopped (one process per shard directory).
    """
    try:
        target = EmbedderSpec.parse(embedder)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--embedder") from exc
    settings = get_settings()
    if settings.vectors.backend != "edge":
        # Server mode has BM25 only (dense spaces are Edge shards), so there is nothing to move.
        raise click.ClickException(
            "reindex needs the Qdrant Edge backend: the Qdrant server backend serves bm25 only"
        )
    if not settings.db.url:
        raise click.ClickException("set DATABASE_URL (the owner role's connection)")
    try:
        report = asyncio.run(_run(settings, tenant_id, target, batch_size, grace_seconds))
    except (LookupError, ValueError, ManifestError, ReindexConflict, MasterKeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    except ApiError as exc:
        raise click.ClickException(
            f"{exc.code}: {exc.detail} (nothing was switched; re-run to resume)"
        ) from exc
    if not report.switched and report.source != report.target:
        raise click.ClickException("not switched")


async def _run(
    settings: Settings, tenant_id: str, target: EmbedderSpec, batch_size: int, grace: float
) -> ReindexReport:
    # Imported here: resources imports the whole service (Litestar) for one helper.
    from app.db.urls import runtime_url
    from app.retrieval.embedders import tenant_embedders

    assert settings.db.url is not None  # noqa: S101 - checked by the caller
    kek = load_master_key(settings) if settings.secrets.backend == "local" else None
    pool = await create_pool(runtime_url(settings.db), min_size=1, max_size=2)
    owner = await connect(settings.db.url)
    registry = TenantRegistry(pool)
    bm25 = EdgeIndex.open(settings.vector_path, search_threads=settings.vectors.search_threads)
    spaces = VectorSpaces(
        bm25, settings.dense_vector_root, search_threads=settings.vectors.search_threads
    )
    backend = build_backend(settings, pool=pool, kek=kek)
    try:
        await registry.load()
        cache = SecretCache(
            backend,
            ttl_seconds=settings.secrets.cache_ttl_seconds,
            max_stale_seconds=settings.secrets.max_stale_seconds,
            platform_refs=lambda tid: opted_in_platform_refs(
                record.manifest if (record := registry.tenant(tid)) else None
            ),
        )
        embedders = tenant_embedders(settings, registry, spaces, cache)
        try:
            return await reindex_tenant(
                owner,
                tenant_id=tenant_id,
                target=target,
                embedders=embedders,
                batch_size=batch_size,
                grace_seconds=grace,
                progress=click.echo,
            )
        finally:
            await embedders.aclose()
    finally:
        await backend.close()
        await spaces.close()
        await bm25.close()
        await owner.close()
        await pool.close()
