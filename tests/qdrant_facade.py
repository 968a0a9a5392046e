"""A Qdrant REST facade over qdrant-client's local mode: a test double for a Qdrant server.

No Qdrant server binary can run on this machine (none is packaged on the registries it
reaches), and qdrant-client's local mode belongs to the one process that opens its directory,
so several Bulkhead processes cannot share it. This facade is that one process: an ASGI app,
served by uvicorn on loopback, that answers the REST endpoints Bulkhead's server adapter
(`app/vectors/qdrant_server.py`, `qdrant_collections.py`, `qdrant_keys.py`, `setup.py`) and
qdrant-client's REST transport send, by parsing each body with `qdrant_client.http.models`
and calling local mode (`QdrantLocal`) with it. Answers have the server's shape:
`{"result": ..., "status": "ok", "time": ...}`, errors `{"status": {"error": ...}}` with 404
for a missing collection, 409 for creating one that exists (as Qdrant >= 1.8 does) and 400
otherwise; `GET /` answers the version of the installed qdrant-client (so the client's
compatibility check and Bulkhead's >= 1.19 guard pass).

Endpoints: `GET /`, `GET /collections`, `GET|PUT|DELETE /collections/{name}`,
`GET /collections/{name}/exists`, `PUT /collections/{name}/index`,
`PUT /collections/{name}/points` (upsert), `POST /collections/{name}/points` (retrieve),
`POST .../points/{batch,delete,scroll,count,query,payload}`. Anything else is a 404 naming the
request, so a new call the adapter starts making fails loudly instead of passing silently.

What it does not do, and so what a test through it cannot show:

- **No authentication.** The `api-key` header is ignored: a per-tenant JWT is neither
  required nor checked (scoped keys are tested against a stub in test_qdrant_keys.py). Bulkhead
  in dev mode without `vectors.qdrant.api_key_secret` mints no per-tenant JWTs and sends every
  request through one client (`SharedClient`), which is how tests use this facade.
- **Local mode's semantics**: exact (brute-force) search, payload indexes accepted and
  ignored, no gRPC, one request at a time (local mode is synchronous, so requests are applied
  in arrival order and never interleave), no sharding, replication or snapshots.
- **Its speed is not a server's**: local mode is pure Python; figures measured through it
  say nothing about Qdrant's own cost.

Run `python -m tests.qdrant_facade --port 6333 --path DIR` (`--path` omitted: in memory), or
`running_facade(path)` from a test. `--cache-reads` (benchmarks only) replays the answer to a
repeated read until the next write, so that local mode's slow exact search does not hide the
cost of the processes being measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic_core
import uvicorn
from pydantic import TypeAdapter, ValidationError
from qdrant_client.http import models
from qdrant_client.local.qdrant_local import QdrantLocal

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[QdrantLocal, str, bytes], Any]

_SELECTOR: TypeAdapter[models.PointsSelector] = TypeAdapter(models.PointsSelector)
_INSERT: TypeAdapter[models.PointInsertOperations] = TypeAdapter(models.PointInsertOperations)


def _exists(local: QdrantLocal, name: str, _body: bytes) -> Any:
    return models.CollectionExistence(exists=local.collection_exists(name))


def _get(local: QdrantLocal, name: str, _body: bytes) -> Any:
    return local.get_collection(name)


def _create(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.CreateCollection.model_validate_json(body)
    return local.create_collection(
        name, vectors_config=request.vectors, sparse_vectors_config=request.sparse_vectors
    )


def _drop(local: QdrantLocal, name: str, _body: bytes) -> Any:
    return local.delete_collection(name)


def _index(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.CreateFieldIndex.model_validate_json(body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "payload indexes have no effect" in local mode
        return local.create_payload_index(name, request.field_name, request.field_schema)


def _upsert(local: QdrantLocal, name: str, body: bytes) -> Any:
    operation = _INSERT.validate_json(body)
    if isinstance(operation, models.PointsBatch):
        return local.upsert(name, operation.batch, update_filter=operation.update_filter)
    return local.upsert(name, operation.points, update_filter=operation.update_filter)


def _retrieve(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.PointRequest.model_validate_json(body)
    return local.retrieve(
        name,
        request.ids,
        with_payload=request.with_payload if request.with_payload is not None else True,
        with_vectors=request.with_vector or False,
    )


def _batch(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.UpdateOperations.model_validate_json(body)
    return local.batch_update_points(name, request.operations)


def _delete(local: QdrantLocal, name: str, body: bytes) -> Any:
    return local.delete(name, _SELECTOR.validate_json(body))


def _set_payload(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.SetPayload.model_validate_json(body)
    selector: models.PointsSelector
    if request.filter is not None:
        selector = models.FilterSelector(filter=request.filter)
    else:
        selector = models.PointIdsList(points=request.points or [])
    return local.set_payload(name, request.payload, selector, key=request.key)


def _scroll(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.ScrollRequest.model_validate_json(body)
    points, offset = local.scroll(
        name,
        scroll_filter=request.filter,
        limit=request.limit if request.limit is not None else 10,
        order_by=request.order_by,
        offset=request.offset,
        with_payload=request.with_payload if request.with_payload is not None else True,
        with_vectors=request.with_vector or False,
    )
    return models.ScrollResult(points=points, next_page_offset=offset)


def _count(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.CountRequest.model_validate_json(body)
    return local.count(name, count_filter=request.filter)


def _query(local: QdrantLocal, name: str, body: bytes) -> Any:
    request = models.QueryRequest.model_validate_json(body)
    return local.query_points(
        name,
        query=request.query,
        using=request.using,
        prefetch=request.prefetch,
        query_filter=request.filter,
        search_params=request.params,
        limit=request.limit if request.limit is not None else 10,
        offset=request.offset,
        with_payload=request.with_payload if request.with_payload is not None else False,
        with_vectors=request.with_vector or False,
        score_threshold=request.score_threshold,
        lookup_from=request.lookup_from,
    )


_COLLECTION = r"/collections/(?P<name>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(f"^{_COLLECTION}{suffix}$"), handler)
    for method, suffix, handler in [
        ("GET", "/exists", _exists),
        ("GET", "", _get),
        ("PUT", "", _create),
        ("DELETE", "", _drop),
        ("PUT", "/index", _index),
        ("PUT", "/points", _upsert),
        ("POST", "/points", _retrieve),
        ("POST", "/points/batch", _batch),
        ("POST", "/points/delete", _delete),
        ("POST", "/points/payload", _set_payload),
        ("POST", "/points/scroll", _scroll),
        ("POST", "/points/count", _count),
        ("POST", "/points/query", _query),
    ]
]


READS = frozenset({_exists, _get, _retrieve, _scroll, _count, _query})
"""Handlers that change nothing: their answers may be replayed until the next write."""


class QdrantFacade:
    """The ASGI app: Qdrant's REST shape in front of one `QdrantLocal`.

    Args:
        path: Local mode's directory; None keeps everything in memory.
        cache_reads: Replay the answer to a read seen before (same method, path and body)
            until the next write. For benchmarks only: local mode's exact search
            costs tens of milliseconds, a server's about one, and this facade runs on the
            cores the processes being measured need.
    """

    def __init__(self, path: str | None = None, *, cache_reads: bool = False) -> None:
        self._local = QdrantLocal(location=path or ":memory:")
        self.version = importlib.metadata.version("qdrant-client")
        self.unknown: list[str] = []
        """Requests no route answered (each also got a 404)."""
        self._cache: dict[tuple[str, str, bytes], tuple[int, bytes]] | None = (
            {} if cache_reads else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one REST request (or the lifespan's messages)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, payload = self._respond(scope["method"], scope["path"], body)
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _respond(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        key = (method, path, body)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        handler, name = _route(method, path)
        status, answer = self._answer(method, path, body, handler, name)
        response = status, pydantic_core.to_json(answer)
        if self._cache is not None:
            if handler in READS:
                self._cache[key] = response
            elif handler is not None:
                self._cache.clear()
        return response

    def _answer(
        self, method: str, path: str, body: bytes, handler: Handler | None, name: str
    ) -> tuple[int, Any]:
        started = time.perf_counter()
        if method == "GET" and path == "/":
            return 200, {"title": "qdrant - vector search engine", "version": self.version}
        if method == "GET" and path == "/collections":
            return 200, _ok(self._local.get_collections(), started)
        if handler is None:
            self.unknown.append(f"{method} {path}")
            return 404, _error(f"the Qdrant facade does not serve {method} {path}", started)
        try:
            return 200, _ok(handler(self._local, name, body), started)
        except (ValidationError, ValueError) as exc:
            detail = str(exc).lower()
            status = 404 if "not found" in detail else 409 if "already exists" in detail else 400
            return status, _error(str(exc), started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._local.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _route(method: str, path: str) -> tuple[Handler | None, str]:
    """The handler of a collection endpoint and the collection's name; (None, "") if none."""
    for route_method, pattern, handler in ROUTES:
        matched = pattern.match(path)
        if matched and route_method == method:
            return handler, matched["name"]
    return None, ""


def _ok(result: Any, started: float) -> dict[str, Any]:
    return {"result": result, "status": "ok", "time": time.perf_counter() - started}


def _error(detail: str, started: float) -> dict[str, Any]:
    return {"status": {"error": detail}, "time": time.perf_counter() - started}


def facade_command(port: int, path: Path | None, *, cache_reads: bool = False) -> list[str]:
    """The command line that serves a facade on 127.0.0.1:`port` (in memory without `path`)."""
    command = [sys.executable, "-m", "tests.qdrant_facade", "--port", str(port)]
    command += ["--path", str(path)] if path is not None else []
    return command + (["--cache-reads"] if cache_reads else [])


def wait_for_facade(url: str, process: subprocess.Popen[bytes], *, timeout: float = 30) -> None:
    """Poll `GET /` until the facade answers.

    Raises:
        RuntimeError: The process exited first, or `timeout` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Qdrant facade exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the Qdrant facade at {url} did not answer within {timeout:g} s")


@contextlib.contextmanager
def running_facade(path: Path | None, *, log: Path | None = None) -> Iterator[str]:
    """A facade process on a free loopback port; yields its URL and stops it on exit."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log.open("wb")) if log else subprocess.DEVNULL
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            facade_command(port, path), cwd=REPO, stdout=output, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_facade(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> None:
    """Serve the facade until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.qdrant_facade", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--path", default=None, help="local-mode directory (default: memory)")
    parser.add_argument(
        "--cache-reads", action="store_true", help="replay repeated reads (benchmarks only)"
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        QdrantFacade(args.path, cache_reads=args.cache_reads),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
