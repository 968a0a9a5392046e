"""A typed client generated from the served document drives the service end to end.

`openapi-python-client` (offline) generates a package from `/schema/openapi.json` as a live
server serves it; the test imports it and goes ingest -> search -> chat -> follow-up ->
conversations -> delete with its typed models, and reads a refusal as its typed `Problem`.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from app.identity.dev_issuer import DevIssuer
from app.tenancy.scope import Role
from tests.conftest import TenantFactory

PACKAGE = "bulkhead_client"
HANDBOOK = (
    "# Leave\n\n## Vacation\nEvery full-time employee receives 25 vacation days per calendar"
    " year.\n\n## Sick leave\nSick leave needs a doctor's note after three days.\n"
)


@pytest.fixture(scope="module")
def generated(live_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package generated from the live server's document, imported."""
    root = tmp_path_factory.mktemp("client")
    document = root / "openapi.json"
    document.write_bytes(httpx.get(f"{live_server}/schema/openapi.json").raise_for_status().content)
    bin_dir = str(Path(sys.executable).parent)  # its post-generation hook runs ruff
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(  # noqa: S603 - fixed arguments, the dev lock's generator
        [
            str(Path(bin_dir) / "openapi-python-client"),
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            "--output-path",
            str(root / PACKAGE),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _import_unset(root / PACKAGE)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _import_unset(package: Path) -> None:
    """Work around a generator bug, not a document problem.

    openapi-python-client 0.29's endpoint template types a body offered in several media
    types (JSON or multipart, as `POST /v1/documents` is) as `... | Unset` without importing
    `Unset`; the module then fails to import. The one missing name is added, nothing else.
    """
    for module in (package / "api").rglob("*.py"):
        text = module.read_text()
        if "| Unset" in text and "import UNSET, Response, Unset" not in text:
            module.write_text(
                text.replace("import UNSET, Response\n", "import UNSET, Response, Unset\n")
            )


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture(scope="module")
def token(live_server: str, make_tenant: TenantFactory, dev_issuer: DevIssuer) -> str:
    tenant = asyncio.run(make_tenant("client"))
    token = dev_issuer.mint(
        tenant=tenant, subject="carol", roles=[Role.CHAT, Role.SEARCH, Role.INGEST]
    )
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=live_server) as http:
        while (
            http.get("/v1/documents", headers={"Authorization": f"Bearer {token}"}).status_code
            == 401
        ):
            assert time.monotonic() < deadline, "the live server never learnt the tenant"
            time.sleep(0.05)
    return token


def test_a_generated_client_drives_ingest_search_chat_and_conversations(
    generated: ModuleType, live_server: str, token: str
) -> None:
    models = _module("models")
    api = "api.default."
    client = generated.AuthenticatedClient(base_url=live_server, token=token)
    with client:
        ingested = _module(api + "v1_documents_ingest").sync(
            client=client,
            body=models.IngestRequest(
                documents=[models.DocumentIn(id="leave", title="Leave", text=HANDBOOK)]
            ),
        )
        assert isinstance(ingested, models.IngestResponse), ingested
        assert [d.id for d in ingested.documents] == ["leave"]

        found = _module(api + "v1_search_search").sync(
            client=client, body=models.SearchRequest(query="vacation days", top_k=1)
        )
        assert isinstance(found, models.SearchResponse), found
        assert found.results[0].document_id == "leave"
        assert "25 vacation days" in found.results[0].text

        chat = _module(api + "v1_chat_chat")
        answer = chat.sync(
            client=client, body=models.ChatRequest(message="How many vacation days do I get?")
        )
        assert isinstance(answer, models.ChatResponse), answer
        assert "25" in answer.answer
        assert answer.citations[0].document_id == "leave"
        follow_up = chat.sync(
            client=client,
            body=models.ChatRequest(
                message="And sick leave?", conversation_id=answer.conversation_id
            ),
        )
        assert isinstance(follow_up, models.ChatResponse), follow_up
        assert follow_up.conversation_id == answer.conversation_id

        listed = _module(api + "v1_conversations_list_conversations").sync(client=client)
        assert isinstance(listed, models.ConversationList), listed
        assert [c.id for c in listed.conversations] == [answer.conversation_id]
        assert listed.conversations[0].messages == 4
        read = _module(api + "v1_conversations_conversation_id_read_conversation")
        detail = read.sync(conversation_id=answer.conversation_id, client=client)
        assert isinstance(detail, models.ConversationDetail), detail
        assert [m.role for m in detail.messages] == ["user", "assistant", "user", "assistant"]

        deleted = _module(api + "v1_conversations_conversation_id_delete_conversation")
        assert (
            deleted.sync_detailed(conversation_id=answer.conversation_id, client=client).status_code
            == 204
        )
        gone = read.sync(conversation_id=answer.conversation_id, client=client)
        assert isinstance(gone, models.Problem), gone
        assert gone.code == "not_found"


def test_a_refusal_arrives_as_a_typed_problem_naming_the_field(
    generated: ModuleType, live_server: str, token: str
) -> None:
    models = _module("models")
    search = _module("api.default.v1_search_search")
    with generated.AuthenticatedClient(base_url=live_server, token=token) as client:
        problem = search.sync(client=client, body=models.SearchRequest(query="q", top_k=10_000))
    assert isinstance(problem, models.Problem), problem
    assert problem.status == 422
    assert problem.code == "validation_error"
    assert problem.errors[0].key == "top_k"
    assert "top_k" in problem.detail
