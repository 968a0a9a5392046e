"""`python -m benchmarks.request_path`: CPU per `/v1/search` request, in-process, no sockets.

The load harness measures latency under a closed loop, which on a shared 2-core machine moves
with everything else running. This measures what one request costs the service itself: the
same set-up as the harness (embedded Postgres, migrated; bench tenants; the synthetic corpus in
the Qdrant Edge shard), then the real app (`create_app`, lifespan run) called directly as an
ASGI callable, one request at a time, with the process's CPU time per request. The floor app
is called the same way. Nothing but Python and the shard runs per request, so the figure is
stable to a few percent and comparable across commits (run it on two checkouts).

Options: `--chunks` (100,000), `--tenants` (100), `-n` requests measured (5,000) after
`--warmup` (300).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db.migrate import upgrade
from app.identity.dev_issuer import DevIssuer
from app.secrets.kek import load_master_key
from app.tenancy.scope import Role
from benchmarks import corpus, floor_app, stack
from benchmarks.harness import APP_ROLE, TOKEN_TTL_SECONDS

Asgi = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[dict[str, Any]]],
        Callable[[dict[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


def _http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _call(app: Asgi, scope: dict[str, Any], body: bytes) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def _cpu_per_request(
    app: Asgi, requests: Callable[[int], tuple[dict[str, Any], bytes]], n: int, warmup: int
) -> float:
    for i in range(warmup):
        status = await _call(app, *requests(i))
        if status != 200:
            raise RuntimeError(f"preflight request {i} answered {status}")
    started = time.process_time()
    for i in range(n):
        await _call(app, *requests(i))
    return (time.process_time() - started) / n * 1000


async def _measure(tokens: list[str], bodies: list[bytes], n: int, warmup: int) -> dict[str, Any]:
    from app.main import create_app  # after the environment below is set

    app = create_app()
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"startup failed: {started}")

    def search(i: int) -> tuple[dict[str, Any], bytes]:
        body = bodies[i % len(bodies)]
        headers = [
            (b"authorization", f"Bearer {tokens[i % len(tokens)]}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        return _http_scope("POST", "/v1/search", headers), body

    floor = floor_app.create_app()

    def floor_request(i: int) -> tuple[dict[str, Any], bytes]:
        return _http_scope("GET", "/floor", []), b""

    try:
        search_ms = await _cpu_per_request(app, search, n, warmup)
        floor_ms = await _cpu_per_request(floor, floor_request, n, warmup)
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await lifespan
    return {
        "search_cpu_ms_per_request": round(search_ms, 3),
        "floor_cpu_ms_per_request": round(floor_ms, 3),
        "search_over_floor": round(search_ms / floor_ms, 1),
        "requests": n,
    }


def main(argv: list[str] | None = None) -> int:
    """Set up, measure, print JSON; 0 unless set-up or a preflight request failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.request_path", description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("-n", type=int, default=5_000, help="requests measured")
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args(argv)
    logging.getLogger("app.secrets.kek").setLevel(logging.ERROR)
    for key in [k for k in os.environ if k.startswith(("BULKHEAD_", "OTEL_"))]:
        del os.environ[key]
    workdir = Path(tempfile.mkdtemp(prefix="bulkhead-request-path-"))
    try:
        with contextlib.ExitStack() as cleanup:
            owner_url = cleanup.enter_context(stack.postgres(workdir, server_url=None))
            upgrade(owner_url, app_role=APP_ROLE)
            tenant_ids = corpus.tenant_ids(args.tenants)
            kek = load_master_key(Settings(dev=True, data_dir=workdir))
            asyncio.run(stack.onboard(owner_url, tenant_ids, kek=kek))
            issuer = DevIssuer.load_or_create(
                workdir / "dev-issuer.pem", issuer=stack.DEV_ISSUER, audience=stack.AUDIENCE
            )
            tokens = [
                issuer.mint(
                    tenant=tenant_id,
                    subject=f"bench-user-{n}",
                    roles=[Role.SEARCH],
                    ttl_seconds=TOKEN_TTL_SECONDS,
                )
                for n, tenant_id in enumerate(tenant_ids)
            ]
            vocabulary = corpus.Vocabulary()
            quotas = dict(
                zip(tenant_ids, corpus.chunk_quota(args.chunks, args.tenants), strict=True)
            )
            asyncio.run(
                corpus.load_corpus(workdir / "qdrant", vocabulary, quotas, progress=lambda _: None)
            )
            (workdir / "no-tenants").mkdir()
            # The same service configuration as the harness's server (see harness.start_servers).
            os.environ.update(
                BULKHEAD_DEV="true",
                BULKHEAD_DATA_DIR=str(workdir),
                BULKHEAD_TENANTS_DIR=str(workdir / "no-tenants"),
                DATABASE_URL=owner_url,
            )
            rng = random.Random(1)
            bodies = [
                json.dumps({"query": vocabulary.query(rng), "top_k": 10}).encode()
                for _ in range(1000)
            ]
            result = asyncio.run(_measure(tokens, bodies, args.n, args.warmup))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"chunks": args.chunks, "tenants": args.tenants, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
