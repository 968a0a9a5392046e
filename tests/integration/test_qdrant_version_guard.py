"""The service will not start its vector index against a Qdrant server older than 1.19.

Such a server ignores the per-tenant IDF corpus (an unknown search parameter) and would rank
every shared tenant with statistics of the whole collection. No Qdrant binary exists here: a
loopback HTTP stub answers the one request made before the refusal (`GET /`, the version), in
Qdrant's JSON shape, to the real qdrant-client REST transport; any other request is recorded
and fails the test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest

from app.config import Settings
from app.vectors.qdrant_collections import QdrantServerTooOld
from app.vectors.setup import open_vector_index


class _Stub(ThreadingHTTPServer):
    version = "1.18.2"
    requests: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        if self.path != "/":
            self.send_error(404)
            return
        body = json.dumps(
            {"title": "qdrant - vector search engine", "version": self.server.version}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.server.requests.append(f"PUT {self.path}")
        self.send_error(500)

    do_POST = do_PUT  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def old_server() -> Iterator[_Stub]:
    server = _Stub(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# qdrant-client's own check, in a thread of its own, warns that 1.20 and 1.18 differ by two.
@pytest.mark.filterwarnings("ignore:Qdrant client version .* is incompatible")
async def test_start_up_refuses_a_server_that_would_ignore_the_tenant_corpus(
    old_server: _Stub,
) -> None:
    host, port = old_server.server_address[:2]
    settings = Settings(
        dev=True,
        vectors={  # type: ignore[arg-type]
            "backend": "qdrant",
            "qdrant": {"url": f"http://{host!s}:{port}", "api_key_secret": None},
        },
    )

    with pytest.raises(QdrantServerTooOld, match=r"'1\.18\.2'.*>= 1\.19"):
        async with open_vector_index(
            settings,
            # Without a cluster key ref neither is consulted before the version check.
            secrets=cast(Any, None),
            secret_cache=cast(Any, None),
            tenant_ids=list,
            isolation_of=lambda _: "shared",
        ):
            pytest.fail("the index opened")

    # qdrant-client checks versions in a thread of its own: let it finish while its warning
    # is filtered and the stub still answers.
    for thread in threading.enumerate():
        if thread.name.endswith("(_check_compatibility)"):
            thread.join(timeout=10)
    assert old_server.requests
    assert set(old_server.requests) == {"GET /"}, "something was created on the old server"
