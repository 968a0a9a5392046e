"""Slow clients against a real uvicorn server: headers and bodies have deadlines (408).

A request whose Content-Length promises more than it sends used to hold its connection (and
a handler) for as long as the client liked; so did headers sent a byte at a time. The server
here is started the way `bulkhead serve` starts it (`server_options`), with short deadlines
so the test is quick; the shipped defaults are checked to be finite below.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from app.config import HttpSettings, Settings
from app.identity.dev_issuer import DevIssuer
from app.tenancy.scope import Role
from tests.conftest import TenantFactory
from tests.live_server import served_bulkhead, wait_until_known

REPO = Path(__file__).resolve().parents[2]
HEADER_SECONDS, IDLE_SECONDS, TOTAL_SECONDS = 1.0, 1.0, 3.0
LAUNCH = """
import uvicorn
from app.config import get_settings
from app.edge.server import server_options
from app.main import create_app
settings = get_settings()
uvicorn.run(create_app(settings), host="127.0.0.1", port={port}, log_level="warning",
            **server_options(settings.http))
"""


@pytest.fixture(scope="module")
def slow_server(
    settings: Settings, tmp_root: Path, kek: bytes, dev_issuer: DevIssuer
) -> Iterator[str]:
    deadlines = {
        "BULKHEAD_HTTP__HEADER_READ_TIMEOUT_SECONDS": str(HEADER_SECONDS),
        "BULKHEAD_HTTP__BODY_IDLE_TIMEOUT_SECONDS": str(IDLE_SECONDS),
        "BULKHEAD_HTTP__BODY_READ_TIMEOUT_SECONDS": str(TOTAL_SECONDS),
    }
    with served_bulkhead(
        settings,
        tmp_root / "timeouts-server",
        command=[sys.executable, "-c", LAUNCH],
        name="slow-client server",
        extra_env=deadlines,
    ) as base:
        yield base


@pytest.fixture
async def token(
    slow_server: str, make_tenant: TenantFactory, app: Litestar, dev_issuer: DevIssuer
) -> str:
    tenant = await make_tenant("slow")
    token = dev_issuer.mint(tenant=tenant, subject="alice", roles=[Role.SEARCH])
    async with httpx.AsyncClient(base_url=slow_server) as http:
        await wait_until_known(http, {"Authorization": f"Bearer {token}"})
    return token


async def _open(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    """Read one response to the end of the connection (the server closes it)."""
    async with asyncio.timeout(20):
        raw = await reader.read()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def _request_head(token: str, length: int) -> bytes:
    return (
        "POST /v1/search HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_body_that_stops_short_is_answered_408(slow_server: str, token: str) -> None:
    reader, writer = await _open(slow_server)
    started = time.monotonic()
    writer.write(_request_head(token, 100) + b'{"query": ')
    await writer.drain()
    status, body = await _response(reader)  # the server answers, then closes
    elapsed = time.monotonic() - started
    writer.close()
    assert status == 408
    assert body["code"] == "request_timeout"
    assert elapsed >= IDLE_SECONDS


async def test_a_body_sent_a_byte_at_a_time_is_answered_408(slow_server: str, token: str) -> None:
    """Never idle for long, but never done: the total deadline ends it."""
    reader, writer = await _open(slow_server)
    started = time.monotonic()
    writer.write(_request_head(token, 10_000))
    answered = asyncio.ensure_future(_response(reader))
    for _ in range(200):  # bounded: at 0.1 s a byte, well past TOTAL_SECONDS
        if answered.done():
            break
        writer.write(b" ")
        await writer.drain()
        await asyncio.wait({answered}, timeout=0.1)
    status, body = await answered
    writer.close()
    assert status == 408
    assert body["code"] == "request_timeout"
    assert time.monotonic() - started >= TOTAL_SECONDS


async def test_headers_that_never_end_are_answered_408(slow_server: str) -> None:
    reader, writer = await _open(slow_server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: a")
    await writer.drain()
    status, body = await _response(reader)
    writer.close()
    assert status == 408
    assert body["code"] == "request_timeout"


async def test_a_complete_request_is_unaffected(slow_server: str, token: str) -> None:
    async with httpx.AsyncClient(base_url=slow_server) as http:
        response = await http.post(
            "/v1/search", json={"query": "anything"}, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text


def test_the_shipped_deadlines_are_finite_and_generous() -> None:
    defaults = HttpSettings()
    assert 0 < defaults.header_read_timeout_seconds <= 30
    assert 0 < defaults.body_idle_timeout_seconds <= 60
    assert 0 < defaults.body_read_timeout_seconds <= 300
    assert defaults.cors_allowed_origins == []
