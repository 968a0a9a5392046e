"""The served OpenAPI 3.1 document: public, valid, complete, and the committed copy in sync."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate

from app.config import Settings
from app.main import create_app
from app.openapi.document import SCHEMA_PATH, openapi_document

Client = AsyncTestClient[Litestar]
COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
REGENERATE = "python -m app.openapi.document > docs/openapi.json"
PUBLIC = {"/healthz", "/readyz", "/.well-known/jwks.json", "/dev/jwks.json"}


@pytest.fixture(scope="module")
async def served(client: Client) -> dict[str, Any]:
    response = await client.get(f"{SCHEMA_PATH}/openapi.json")  # no credential: public
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_the_document_is_valid_openapi_3_1(served: dict[str, Any]) -> None:
    assert served["openapi"].startswith("3.1")
    validate(served)


def test_the_committed_document_is_what_the_app_serves(served: dict[str, Any]) -> None:
    production = openapi_document(create_app(Settings(dev=False)))
    committed = json.loads(COMMITTED.read_text())
    assert committed == production, f"docs/openapi.json is stale: run `{REGENERATE}`"
    # Dev mode serves the same contract plus the dev issuer's JWKS.
    dev_only = {k: v for k, v in served["paths"].items() if k not in committed["paths"]}
    assert set(dev_only) == {"/dev/jwks.json"}
    assert {**served, "paths": {k: v for k, v in served["paths"].items() if k not in dev_only}} == (
        committed
    )


def test_every_route_is_documented(app: Litestar, served: dict[str, Any]) -> None:
    documented = {(path, method.upper()) for path, method, _ in _operations(served)}
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith(SCHEMA_PATH):
            continue
        for method in route.methods - {"OPTIONS", "HEAD"}:
            assert (route.path_format, method) in documented, (route.path, method)


def test_every_operation_states_its_errors_and_who_may_call_it(served: dict[str, Any]) -> None:
    assert {"bearerJwt", "apiKey"} <= set(served["components"]["securitySchemes"])
    assert "Problem" in served["components"]["schemas"]
    for path, method, operation in _operations(served):
        where = f"{method.upper()} {path}"
        assert operation.get("description"), f"{where}: no description"
        responses = operation["responses"]
        errors = {int(s): r for s, r in responses.items() if int(s) >= 400}
        for status, response in errors.items():
            content = response["content"]
            assert list(content) == ["application/problem+json"], where
            assert "`code`" in response["description"], where
            assert content["application/problem+json"]["example"]["status"] == status
        if path in PUBLIC:
            assert operation["security"] == [], where
            continue
        assert {401, 403} <= set(errors), where
        if operation.get("parameters") or "requestBody" in operation:
            # Validation failures are declared with the status they get: 422, not 400.
            assert {400, 422} <= set(errors), where
            assert "malformed_request" in errors[400]["description"], where
        if "requestBody" in operation:
            assert {408, 413} <= set(errors), where


def test_bodies_and_media_types_litestar_cannot_see(served: dict[str, Any]) -> None:
    paths = served["paths"]
    ingest = paths["/v1/documents"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(ingest)
    assert ingest["application/json"]["schema"] == {"$ref": "#/components/schemas/IngestRequest"}
    assert "file" in ingest["multipart/form-data"]["schema"]["properties"]
    completions = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]
    assert completions["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CompletionsRequest"
    }
    for chat in ("/v1/chat", "/v1/chat/completions"):
        assert "text/event-stream" in paths[chat]["post"]["responses"]["200"]["content"]
    audit = paths["/v1/admin/audit"]["get"]["responses"]["200"]["content"]
    assert list(audit) == ["application/x-ndjson"]
    assert paths["/v1/search"]["post"]["requestBody"]["content"]["application/json"]["example"]


async def test_the_ui_is_served_in_dev(client: Client) -> None:
    response = await client.get(SCHEMA_PATH)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]


async def test_validation_failures_answer_the_status_the_document_declares(
    client: Client, served: dict[str, Any]
) -> None:
    declared = served["paths"]["/v1/documents"]["get"]["responses"]
    response = await client.get("/v1/documents?limit=abc", headers={"Authorization": "x"})
    assert response.status_code == 401  # authentication first
    assert "422" in declared
    assert "Bad request syntax" not in json.dumps(served)


def test_every_error_code_the_service_raises_is_documented() -> None:
    """Each `ApiError` subclass's (status, code) is among the document's problem codes."""
    import importlib
    import pkgutil

    import app as package
    from app.openapi.contract import PROBLEMS
    from app.problems import ApiError

    for module in pkgutil.walk_packages(package.__path__, "app."):
        importlib.import_module(module.name)

    def subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
        return [s for c in cls.__subclasses__() for s in (c, *subclasses(c))]

    raised = {(error.status, error.code) for error in subclasses(ApiError)}
    documented = {(status, code) for status, (_, codes) in PROBLEMS.items() for code in codes}
    assert raised - documented == set()
