"""The served OpenAPI 3.1 document: Litestar's, from the handlers, completed by `contract`.

`GET /schema/openapi.json` is public (a client generator needs it before it has a
credential); a browsable UI is served at `/schema` in dev mode (or when `http.openapi_ui`
is on). `docs/openapi.json` is this document, committed; a test fails when they drift.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from litestar import Litestar, Request
from litestar.enums import MediaType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, SwaggerRenderPlugin

from app.config import Settings
from app.openapi import contract

SCHEMA_PATH = "/schema"
TITLE = "Bulkhead"
DESCRIPTION = (
    "A multi-tenant RAG backend. Every request carries `Authorization: Bearer <credential>`"
    " (a JWT from the tenant's identity provider, a service token, or a `bk_` API key); the"
    " tenant comes only from it. Every error is `application/problem+json` with a stable"
    " `code` and the offending field named in `detail` and `errors`; every response carries"
    " `X-Trace-Id`."
)
_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


class ContractJsonPlugin(JsonRenderPlugin):
    """Serves the completed document (`complete`) as `application/json`, built once."""

    def __init__(self) -> None:
        super().__init__(media_type=MediaType.JSON)
        self._document: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def document(self, generated: dict[str, Any]) -> dict[str, Any]:
        """The completed document for Litestar's `generated` one (computed on first use)."""
        with self._lock:
            if self._document is None:
                self._document = complete(copy.deepcopy(generated))
            return self._document

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The completed document, JSON-encoded."""
        return self.render_json(request, self.document(openapi_schema))


def openapi_config(settings: Settings, *, version: str) -> OpenAPIConfig:
    """Litestar's OpenAPI settings: the JSON document always, the UI in dev (or if asked)."""
    plugins: list[OpenAPIRenderPlugin] = [ContractJsonPlugin()]
    ui = settings.http.openapi_ui if settings.http.openapi_ui is not None else settings.dev
    if ui:
        plugins.append(SwaggerRenderPlugin(path="/"))
    return OpenAPIConfig(
        title=TITLE,
        version=version,
        description=DESCRIPTION,
        path=SCHEMA_PATH,
        render_plugins=plugins,
        use_handler_docstrings=True,
    )


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The document `app` serves at `/schema/openapi.json`.

    Raises:
        LookupError: The app serves no OpenAPI document.
    """
    config = app.openapi_config
    if config is None:
        raise LookupError("this app serves no OpenAPI document")
    for plugin in config.render_plugins:
        if isinstance(plugin, ContractJsonPlugin):
            return plugin.document(app.openapi_schema.to_schema())
    raise LookupError("this app's OpenAPI config has no ContractJsonPlugin")


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add to Litestar's document what it cannot read from the handlers (`app.openapi.contract`).

    Returns:
        `document`, completed in place.
    """
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = contract.PROBLEM_SCHEMA
    components["securitySchemes"] = contract.SECURITY_SCHEMES
    document["security"] = [{"bearerJwt": []}, {"apiKey": []}]
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            if method in item:
                _complete_operation(path, method, item[method], schemas)
    return document


def _complete_operation(
    path: str, method: str, operation: dict[str, Any], schemas: dict[str, Any]
) -> None:
    if path in contract.PUBLIC_OPERATIONS:
        operation["security"] = []
    if (path, method) == ("/v1/documents", "post"):
        operation["requestBody"] = contract.ingest_body(schemas)
    elif (path, method) == ("/v1/chat/completions", "post"):
        operation["requestBody"] = contract.completions_body(schemas)
    example = contract.EXAMPLES.get((path, method))
    if example is not None and "requestBody" in operation:
        operation["requestBody"]["content"]["application/json"]["example"] = example
    responses: dict[str, Any] = operation.setdefault("responses", {})
    _streaming(path, method, responses)
    # Litestar's own 400 ("Bad request syntax or unsupported method") describes neither the
    # shape nor the status validation failures really get (422): replaced by the rules.
    responses.pop("400", None)
    for status in contract.statuses_for(path, method, operation):
        responses[str(status)] = contract.problem_response(status)


def _streaming(path: str, method: str, responses: dict[str, Any]) -> None:
    ok = responses.get("200")
    if ok is None:
        return
    text = {"schema": {"type": "string"}}
    if path in contract.PROVIDER_PATHS and method == "post":
        # The handler returns `JSON | EventStream`: Litestar documents the stream as an empty
        # schema inside a oneOf (anything matches it, so any answer matches both). The JSON
        # answer is the JSON schema alone; the stream has its own media type below.
        json_answer = ok.get("content", {}).get("application/json", {})
        choices = json_answer.get("schema", {}).get("oneOf")
        if choices:
            (json_answer["schema"],) = [c for c in choices if c]
        ok.setdefault("content", {})[contract.EVENT_STREAM] = {
            "schema": contract.sse_event_schema(path)
        }
    if path == "/v1/admin/audit" or path.endswith("/export"):
        ok["content"] = {contract.NDJSON: text}


def main() -> None:
    """Print the production document (`python -m app.openapi.document > docs/openapi.json`)."""
    import json
    import sys

    from app.main import create_app

    # Imported by name: run as `__main__`, this module's classes are not the app's.
    from app.openapi.document import openapi_document as served

    app = create_app(Settings(dev=False))
    sys.stdout.write(json.dumps(served(app), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
