"""`bulkhead serve --workers N`: N processes on one address, each its own service.

uvicorn's supervisor (`uvicorn.supervisors.Multiprocess`) runs them. The parent binds the
address, starts N workers (fresh interpreters: multiprocessing's `spawn`) and does nothing
else: it builds no app, opens no pool. Each worker builds its own app from the parent's
settings (`WorkerConfig.load`): its own Postgres pool, NOTIFY listeners, caches, vector clients
and audit writer, and freezes its heap once started, as a single `bulkhead serve` does. Each
worker listens on a socket of its own in one `SO_REUSEPORT` group (`WorkerSocket`), and the
kernel spreads new connections over them; a connection stays with its worker while it is kept
alive.

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
import socket
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


class WorkerSocket(socket.socket):
    """The parent's socket, which each worker that receives it replaces with a bound one of its own.

    uvicorn's supervisor hands every worker the parent's one listening socket, and a worker's
    event loop, once woken, accepts everything queued: a burst of keep-alive connections (a
    proxy's pool, a load generator) lands on one worker and stays there (measured: 16 of 16,
    and N=2 served no more than N=1). Unpickled in a worker, this socket is instead a new one
    bound to the same address with `SO_REUSEPORT`, so each worker listens on its own socket of
    one group and the kernel spreads new connections over them by the hash of their
    addresses. The parent's own socket only holds the address (it never listens, so the kernel
    sends it nothing). Linux only, as the service's images are.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild as a fresh socket on the same address in the receiving process."""
        return (_bound_socket, (self.family, self.getsockname()))


def _bound_socket(family: int, address: tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        _log.exception("worker could not bind %s", address)
        # Exit before serving: uvicorn's parent stops instead of restarting the worker.
        sys.exit(STARTUP_FAILURE)
    return sock


def listening_address(host: str, port: int) -> WorkerSocket:
    """The parent's socket on `host:port` (port 0: one the kernel picks, shared by all).

    Raises:
        OSError: The address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = WorkerSocket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_workers(settings: Settings, build: AppBuilder, **options: Any) -> None:
    """Serve with `settings.workers` processes until SIGTERM/SIGINT, then drain them all.

    `options` are uvicorn's (host, port, timeouts...); the HTTP protocol comes from
    `settings.http` in each worker.

    Raises:
        WorkersFailed: A worker's start-up failed (every other worker was stopped).
        OSError: The address cannot be bound.
    """
    prepare_generated_keys(settings)
    config = WorkerConfig(settings, build, **options)
    sock = listening_address(config.host, config.port)
    _log.info(
        "serving on http://%s:%d with %d workers",
        config.host,
        sock.getsockname()[1],
        config.workers,
    )
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise WorkersFailed(
            f"worker {', '.join(map(str, failed))} failed to start (its log is above);"
            " every worker was stopped"
        )
