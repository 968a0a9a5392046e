"""`bulkhead ingest` as a user runs it: a subprocess talking HTTP to a running service."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.tenancy.scope import Role
from tests.conftest import AuthHeaders, TenantFactory
from tests.live_server import REPO, wait_until_known
from tests.samples import CORRUPT_PDF, make_pdf
from tests.servers import free_port


class Run:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


def cli_env(api_key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHEAD_", "OTEL_"))}
    if api_key is not None:
        env["BULKHEAD_API_KEY"] = api_key
    return env


def cli_args(tenant: str, url: str, journal: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app.cli",
        "ingest",
        "--tenant",
        tenant,
        "--url",
        url,
        "--journal",
        str(journal),
        *extra,
    ]


async def run_cli(args: list[str], api_key: str | None) -> Run:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=REPO,
        env=cli_env(api_key),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return Run(process.returncode, stderr.decode())


@pytest.fixture
async def tenant_with_key(
    make_tenant: TenantFactory, auth: AuthHeaders, live_server: str
) -> AsyncIterator[tuple[str, str, httpx.AsyncClient]]:
    """A fresh tenant known to the live server, an ingest+search API key, and a client."""
    tenant = await make_tenant("cli")
    # Closed here, not in the test: a failing test must not leave a socket for a later one.
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        admin = auth(tenant, roles=(Role.ADMIN,))
        await wait_until_known(http, admin)
        response = await http.post(
            "/v1/admin/api-keys",
            json={"name": "bulk", "scopes": ["ingest", "search"]},
            headers=admin,
        )
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        http.headers["Authorization"] = f"Bearer {key}"
        yield tenant, key, http


class UploadGate:
    """A loopback HTTP relay to the live server that holds one chosen upload.

    Lets a test interrupt `bulkhead ingest` at a known point, whatever the machine's load: the
    `hold_at`-th `POST /v1/documents` is never answered, nor forwarded, until `release()`,
    and is then dropped (its client is gone by then). Every other request passes through.
    """

    def __init__(self, upstream: str, *, hold_at: int) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.held = asyncio.Event()
        self._upstream = upstream
        self._hold_at = hold_at
        self._uploads = 0
        self._released = asyncio.Event()
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(
            self._asgi, host="127.0.0.1", port=port, lifespan="off", interface="asgi3"
        )
        config.log_level = "warning"
        self._server = uvicorn.Server(config)

    async def __aenter__(self) -> UploadGate:
        self._http = httpx.AsyncClient(base_url=self._upstream, timeout=30)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 - uvicorn offers no event to await
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()
        self._server.should_exit = True
        await self._task
        await self._http.aclose()

    def release(self) -> None:
        """Let the held upload go (it is dropped) and stop holding."""
        self._released.set()

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "POST" and scope["path"] == "/v1/documents":
            self._uploads += 1
            if self._uploads == self._hold_at:
                self.held.set()
                await self._released.wait()
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k != b"host"]
        path = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        response = await self._http.request(scope["method"], path, headers=headers, content=body)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (k.encode(), v.encode())
                    for k, v in response.headers.items()
                    if k not in {"content-length", "transfer-encoding", "content-encoding"}
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.content})


async def _stderr_of(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    return (await process.stderr.read()).decode()


async def versions(http: httpx.AsyncClient) -> dict[str, int]:
    response = await http.get("/v1/documents", params={"limit": "200"})
    assert response.status_code == 200, response.text
    return {d["id"]: d["version"] for d in response.json()["documents"]}


async def hits(http: httpx.AsyncClient, query: str) -> list[dict[str, Any]]:
    response = await http.post("/v1/search", json={"query": query, "top_k": 50})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


async def test_a_tree_is_ingested_with_per_file_errors_and_reruns_skip_unchanged_files(
    tenant_with_key: tuple[str, str, httpx.AsyncClient], live_server: str, tmp_path: Path
) -> None:
    tenant, key, http = tenant_with_key
    docs = tmp_path / "docs"
    (docs / "policies").mkdir(parents=True)
    (docs / ".hidden").mkdir()
    (docs / "handbook.md").write_text("# Handbook\n\nThe gecko club meets on Fridays.\n")
    (docs / "notes.txt").write_text("Printer toner lives next to the iguana poster.")
    (docs / "policies" / "travel.html").write_text("<h1>Travel</h1><p>Chameleon class only.</p>")
    (docs / "policies" / "remote.pdf").write_bytes(make_pdf([["Remote salamander days."]]))
    (docs / "broken.pdf").write_bytes(CORRUPT_PDF)
    (docs / "photo.png").write_bytes(b"\x89PNG not a document")
    (docs / ".hidden" / "draft.md").write_text("# Draft\n\nnot for ingestion")
    journal = tmp_path / "journal.jsonl"
    args = cli_args(tenant, live_server, journal, str(docs), str(tmp_path / "missing"))

    first = await run_cli(args, key)
    assert first.returncode == 1, first.stderr
    assert "4 ingested (4 chunks), 0 unchanged (skipped), 2 failed, of 6 files" in first.stderr
    assert "broken.pdf: 422 unreadable_file" in first.stderr
    assert "missing: no such file or directory" in first.stderr
    expected = {"handbook.md", "notes.txt", "policies:travel.html", "policies:remote.pdf"}
    assert await versions(http) == dict.fromkeys(expected, 1)
    assert [h["document_id"] for h in await hits(http, "chameleon")] == ["policies:travel.html"]

    again = await run_cli(args, key)
    assert again.returncode == 1
    assert "0 ingested (0 chunks), 4 unchanged (skipped), 2 failed" in again.stderr
    assert await versions(http) == dict.fromkeys(expected, 1)

    (docs / "notes.txt").write_text("Printer toner moved next to the iguana statue.")
    (docs / "broken.pdf").unlink()
    fixed = await run_cli(cli_args(tenant, live_server, journal, str(docs)), key)
    assert fixed.returncode == 0, fixed.stderr
    assert "1 ingested (1 chunks), 3 unchanged (skipped), 0 failed, of 4 files" in fixed.stderr
    assert (await versions(http))["notes.txt"] == 2
    assert [h["text"] for h in await hits(http, "iguana")] == [
        "Printer toner moved next to the iguana statue."
    ]


async def test_ctrl_c_then_rerun_finishes_without_duplicates(
    tenant_with_key: tuple[str, str, httpx.AsyncClient], live_server: str, tmp_path: Path
) -> None:
    tenant, key, http = tenant_with_key
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    total = 60
    for i in range(total):
        (corpus / f"entry-{i:02d}.md").write_text(f"# Entry {i}\n\nThe tapir{i} marker is here.\n")
    journal = tmp_path / "journal.jsonl"
    async with UploadGate(live_server, hold_at=4) as gate:
        args = cli_args(tenant, gate.url, journal, "--batch-size", "1", str(corpus))
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=REPO,
            env=cli_env(key),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        # Ctrl-C while the fourth file is in flight: three confirmed, one unanswered.
        exited = asyncio.create_task(process.wait())
        await asyncio.wait([exited, asyncio.create_task(gate.held.wait())], timeout=60)
        assert gate.held.is_set(), await _stderr_of(process)
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 130, stderr.decode()
        assert "interrupted: rerun the same command to resume" in stderr.decode()
        journalled = len(journal.read_text().splitlines())
        assert journalled == 3
        gate.release()

        rerun = await run_cli(args, key)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{journalled} unchanged (skipped), 0 failed, of {total} files" in rerun.stderr
    stored = await versions(http)
    assert sorted(stored) == [f"entry-{i:02d}.md" for i in range(total)]
    # At most the one file in flight at Ctrl-C was sent twice: replaced, never duplicated.
    assert sum(v for v in stored.values()) <= total + 1
    for i in range(total):
        assert [h["document_id"] for h in await hits(http, f"tapir{i}")] == [f"entry-{i:02d}.md"]


async def test_credential_problems_stop_the_run_at_once(
    tenant_with_key: tuple[str, str, httpx.AsyncClient],
    make_tenant: TenantFactory,
    live_server: str,
    tmp_path: Path,
) -> None:
    tenant, key, http = tenant_with_key
    (tmp_path / "a.txt").write_text("alpha")
    journal = tmp_path / "journal.jsonl"
    args = cli_args(tenant, live_server, journal, str(tmp_path / "a.txt"))

    missing = await run_cli(args, None)
    assert missing.returncode == 2
    assert "set BULKHEAD_API_KEY" in missing.stderr

    wrong = await run_cli(args, "bk_notakey_000")
    assert wrong.returncode == 2
    assert "the service refused the request: 401 unauthenticated" in wrong.stderr

    other = await make_tenant("other")
    mismatch = await run_cli(cli_args(other, live_server, journal, str(tmp_path / "a.txt")), key)
    assert mismatch.returncode == 2
    assert "403 tenant_mismatch" in mismatch.stderr
    assert await versions(http) == {}
    assert not journal.exists()


async def test_a_group_the_credential_is_not_in_stops_the_run_and_writes_nothing(
    tenant_with_key: tuple[str, str, httpx.AsyncClient],
    auth: AuthHeaders,
    live_server: str,
    tmp_path: Path,
) -> None:
    """An API key carries no groups, so it may not write `--group hr` documents; a JWT in hr may."""
    tenant, key, http = tenant_with_key
    (tmp_path / "pay.txt").write_text("The okapi payroll runs on the 25th.")
    journal = tmp_path / "journal.jsonl"
    args = cli_args(tenant, live_server, journal, "--group", "hr", str(tmp_path / "pay.txt"))
    hr = auth(tenant, user="carol", roles=(Role.SEARCH, Role.INGEST), groups=("hr",))

    refused = await run_cli(args, key)
    assert refused.returncode == 2, refused.stderr
    assert "403 acl_excludes_caller" in refused.stderr
    listed = await http.get("/v1/documents", headers=hr)
    assert listed.json()["documents"] == []
    assert not journal.exists()

    accepted = await run_cli(args, hr["Authorization"].removeprefix("Bearer "))
    assert accepted.returncode == 0, accepted.stderr
    listed = await http.get("/v1/documents", headers=hr)
    assert [(d["id"], d["acl"]) for d in listed.json()["documents"]] == [
        ("pay.txt", {"groups": ["hr"]})
    ]
