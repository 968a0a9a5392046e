"""The service as `bulkhead dev` runs it: a subprocess with the demo tenants and sample corpus.

Two tenants (`demo`, `globex`) share the dev issuer and have handbooks with the same file names
(so the same document ids) but different facts. Everything here goes over real HTTP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.db.embedded import ensure_database
from app.db.urls import with_database
from tests.servers import free_port, wait_until_ready

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _env(data_dir: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHEAD_", "OTEL_"))}
    env |= {"DATABASE_URL": database_url, "BULKHEAD_DATA_DIR": str(data_dir)}
    return env


@pytest.fixture(scope="module")
def dev_server(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """`bulkhead dev` on a free port with its own database and data dir; stopped afterwards."""
    name = f"bulkhead_e2e_{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_database(server_url, name))
    data_dir = tmp_path_factory.mktemp("dev-data")
    port = free_port()
    env = _env(data_dir, with_database(server_url, name))
    log = (data_dir / "server.log").open("w")
    process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "app.cli", "dev", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, base, data_dir / "server.log", timeout=90, name="bulkhead dev")
        yield base, data_dir, env
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _token(env: dict[str, str], tenant: str, user: str, roles: str = "chat,search,ingest") -> str:
    result = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [
            sys.executable,
            "-m",
            "app.cli",
            "token",
            "--tenant",
            tenant,
            "--user",
            user,
            "--roles",
            roles,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def http(dev_server: tuple[str, Path, dict[str, str]]) -> Iterator[httpx.Client]:
    base, _, env = dev_server
    with httpx.Client(base_url=base, timeout=10) as client:
        client.headers["x-demo"] = _token(env, "demo", "alice")
        client.headers["x-globex"] = _token(env, "globex", "bob")
        yield client


def _as(client: httpx.Client, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.headers[f'x-{tenant}']}"}


def test_printed_curl_gets_a_cited_answer(dev_server: tuple[str, Path, dict[str, str]]) -> None:
    base, data_dir, _ = dev_server
    printed = (data_dir / "server.log").read_text()
    token_line = next(line for line in printed.splitlines() if "export TOKEN=" in line)
    token = token_line.split("TOKEN=", 1)[1].strip()
    curl = next(line for line in printed.splitlines() if line.strip().startswith("curl "))
    assert f"{base}/v1/chat" in curl
    response = httpx.post(
        f"{base}/v1/chat",
        json={"message": "How many vacation days do I get?"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert "25 vacation days" in body["answer"]
    assert body["citations"][0]["document_id"] == "vacation-policy"
    assert body["provider"] == "local"


def test_each_tenant_answers_from_its_own_handbook(http: httpx.Client) -> None:
    question = {"message": "How many vacation days do I get?"}
    demo = http.post("/v1/chat", json=question, headers=_as(http, "demo")).json()
    globex = http.post("/v1/chat", json=question, headers=_as(http, "globex")).json()
    assert "25 vacation days" in demo["answer"]
    assert "18 vacation days" in globex["answer"]
    assert "25 vacation days" not in globex["answer"]
    for citation in globex["citations"]:
        assert "Demo Corp" not in citation["snippet"]


def test_tenant_b_cannot_reach_tenant_a(http: httpx.Client) -> None:
    secret = {
        "id": "board-minutes",
        "title": "Board minutes",
        "text": "The board approved Project Marzipan, a confidential acquisition.",
    }
    created = http.post("/v1/documents", json={"documents": [secret]}, headers=_as(http, "demo"))
    assert created.status_code == 201

    globex = _as(http, "globex")
    search = http.post(
        "/v1/search", json={"query": "Project Marzipan acquisition", "top_k": 50}, headers=globex
    )
    assert search.status_code == 200
    assert all(hit["document_id"] != "board-minutes" for hit in search.json()["results"])
    assert all("Marzipan" not in hit["text"] for hit in search.json()["results"])

    chat = http.post(
        "/v1/chat", json={"message": "What is Project Marzipan?"}, headers=globex
    ).json()
    assert "Marzipan" not in chat["answer"]
    assert all(c["document_id"] != "board-minutes" for c in chat["citations"])

    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": "200"} | ({"cursor": cursor} if cursor else {})
        page = http.get("/v1/documents", params=params, headers=globex).json()
        ids += [d["id"] for d in page["documents"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert "board-minutes" not in ids
    assert len(ids) == 16  # globex's own handbook, nothing more

    deleted = http.delete("/v1/documents/board-minutes", headers=globex)
    assert (deleted.status_code, deleted.json()["code"]) == (404, "not_found")

    mismatch = http.post(
        "/v1/search", json={"query": "Marzipan"}, headers=globex | {"X-Tenant-ID": "demo"}
    )
    assert (mismatch.status_code, mismatch.json()["code"]) == (403, "tenant_mismatch")
    in_body = http.post(
        "/v1/search", json={"query": "Marzipan", "tenant_id": "demo"}, headers=globex
    )
    assert (in_body.status_code, in_body.json()["code"]) == (403, "tenant_mismatch")
    by_filter = http.post(
        "/v1/search", json={"query": "Marzipan", "filter": {"tenant_id": "demo"}}, headers=globex
    )
    assert (by_filter.status_code, by_filter.json()["code"]) == (422, "validation_error")

    still = http.post("/v1/search", json={"query": "Project Marzipan"}, headers=_as(http, "demo"))
    assert still.json()["results"][0]["document_id"] == "board-minutes"


def test_marker_facts_stay_with_their_tenant(http: httpx.Client) -> None:
    demo_dog = http.post(
        "/v1/search", json={"query": "office dog Biscuit"}, headers=_as(http, "demo")
    )
    assert "Biscuit" in demo_dog.json()["results"][0]["text"]
    globex_dog = http.post("/v1/search", json={"query": "Biscuit"}, headers=_as(http, "globex"))
    assert all("Biscuit" not in hit["text"] for hit in globex_dog.json()["results"])
    nightjar = http.post(
        "/v1/search", json={"query": "Project Nightjar"}, headers=_as(http, "demo")
    )
    assert all("Nightjar" not in hit["text"] for hit in nightjar.json()["results"])


def test_every_response_carries_a_trace_id(http: httpx.Client) -> None:
    for response in (
        http.get("/healthz"),
        http.get("/v1/nowhere"),
        http.post("/v1/search", json={"query": "x"}),
        http.post("/v1/search", json={"query": "x"}, headers=_as(http, "demo")),
    ):
        assert len(response.headers["x-trace-id"]) == 32
