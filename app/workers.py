"""`bulkhead serve --workers N`: N processes behind one listening socket, each its own service.

uvicorn's supervisor (`uvicorn.supervisors.Multiprocess`) runs them. The parent binds the
socket, starts N workers (fresh interpreters: multiprocessing's `spawn`) and does nothing else:
it builds no app, opens no pool. Each worker builds its own app from the parent's settings
(`WorkerConfig.load`): its own Postgres pool, NOTIFY listeners, caches, vector clients and
audit writer, and freezes its heap once started, as a single `bulkhead serve` does. The kernel
spreads new connections over the workers (they accept on the same socket).

What the parent does, as uvicorn 0.54 is written (read from its source):

- **SIGTERM or SIGINT**: sends SIGTERM to every worker, each drains as one process does (stop
  accepting, `shutdown.drain_seconds` for requests in flight, flush the audit trail, close the
  pools), waits for all of them, and exits 0.
- **A worker that dies after it started** (killed, out of memory, a crash) is replaced by a
  new one at once; nothing else stops. So is a worker that does not answer the parent's health
  ping (a pipe, answered by a thread of the worker) within 5 s.
- **A worker whose start-up fails** (its lifespan raised: Postgres unreachable, a vector store
  that refuses; uvicorn's exit code 3) stops the parent: the other workers are stopped too.
  uvicorn's parent then returns as after a stop; `run_workers` reads the exit codes and raises
  `WorkersFailed`, so `serve` exits non-zero instead of 0. A worker that cannot even build its
  app exits with the same code (`WorkerConfig.load`), not 1, which uvicorn would restart
  forever.

Only a vector backend that several processes can share allows N > 1 (`refusal`): the Qdrant
Edge shard and qdrant-client's local mode are locked by the one process that opens them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.edge.server import server_options
from app.identity.dev_issuer import DevIssuer
from app.identity.service_tokens import ServiceTokenIssuer

if TYPE_CHECKING:
    from litestar import Litestar

_log = logging.getLogger(__name__)

AppBuilder = Callable[[Settings], "Litestar"]
"""Builds one worker's app from the settings; a module-level function (it is pickled by name)."""


class WorkersFailed(RuntimeError):
    """A worker failed to start, so the parent stopped every worker."""


def refusal(settings: Settings) -> str | None:
    """Why `settings.workers` processes cannot serve with these settings; None when they can."""
    if settings.workers <= 1:
        return None
    vectors = settings.vectors
    if vectors.backend == "qdrant" and vectors.qdrant.url:
        return None
    if vectors.backend == "edge":
        store = (
            f"the vector backend is the embedded Qdrant Edge shard ({settings.vector_path}),"
            " which one process owns (it locks the shard)"
        )
    else:
        store = (
            "the vector backend is qdrant-client's local mode (vectors.qdrant.url is empty),"
            f" which one process owns (it locks {settings.qdrant_local_path})"
        )
    return (
        f"--workers {settings.workers}: {store}. Several workers need a Qdrant server they all"
        " reach: set BULKHEAD_VECTORS__BACKEND=qdrant and BULKHEAD_VECTORS__QDRANT__URL (see"
        " docs/operations.md, 'Several workers'); or serve with --workers 1."
    )


class WorkerConfig(uvicorn.Config):
    """uvicorn's config, pickled into each worker, where `load` builds that worker's own app.

    Only picklable things travel: the settings, the builder (a module-level function) and
    uvicorn's options. The app and the edge's HTTP protocol (a class made for the header
    deadline) are built in the worker.
    """

    def __init__(self, settings: Settings, build: AppBuilder, **options: Any) -> None:
        super().__init__(
            # Never imported: `load` replaces it with the built app.
            "bulkhead:worker-app",
            workers=settings.workers,
            http="httptools",
            **options,
        )
        self.settings = settings
        self.build = build

    def load(self) -> None:
        """Build this worker's app, then let uvicorn load it.

        A failure exits with uvicorn's start-up failure code, so the parent stops instead of
        restarting this worker forever.
        """
        self.http = server_options(self.settings.http)["http"]
        try:
            self.app = self.build(self.settings)
        except Exception:
            _log.exception("worker could not build the app")
            sys.exit(STARTUP_FAILURE)
        super().load()


def prepare_generated_keys(settings: Settings) -> None:
    """Dev mode: generate the keys every worker would otherwise generate at start-up, once.

    Left to the workers, each would race to create the dev issuer's and the service-token
    signing key (exclusive creation: the loser's start-up fails). Outside dev mode nothing is
    generated: the keys are the operator's files.
    """
    if not settings.dev:
        return
    DevIssuer.load_or_create(
        settings.dev_signing_key_path,
        issuer=settings.auth.dev_issuer,
        audience=settings.auth.audience,
    )
    ServiceTokenIssuer.from_files(
        settings.service_signing_key_path,
        [],
        create=True,
        issuer=settings.auth.service_issuer,
        audience=settings.auth.audience,
        ttl_seconds=settings.auth.service_token_ttl_seconds,
        leeway_seconds=settings.auth.leeway_seconds,
    )


def run_workers(settings: Settings, build: AppBuilder, **options: Any) -> None:
    """Serve with `settings.workers` processes until SIGTERM/SIGINT, then drain them all.

    `options` are uvicorn's (host, port, timeouts...); the HTTP protocol comes from
    `settings.http` in each worker.

    Raises:
        WorkersFailed: A worker's start-up failed (every other worker was stopped).
    """
    prepare_generated_keys(settings)
    config = WorkerConfig(settings, build, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise WorkersFailed(
            f"worker {', '.join(map(str, failed))} failed to start (its log is above);"
            " every worker was stopped"
        )
