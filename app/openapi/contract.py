"""What the OpenAPI document says beyond what Litestar reads from the handlers.

Litestar documents each handler's parameters, JSON body and success response. The rest of the
contract is stated here, once, as rules over every operation, so a new endpoint is documented
the moment it exists: which problem+json statuses it can answer and with which `code`s, the
bodies Litestar cannot see (JSON and multipart ingestion, the OpenAI-shaped completions
request), the streaming media types, who may call it, and examples.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from app.chat.completions_schemas import CompletionsRequest
from app.edge.multipart import MAX_FILENAME_CHARS
from app.retrieval.schemas import IngestRequest

PROBLEM_JSON: Final = "application/problem+json"
NDJSON: Final = "application/x-ndjson"
EVENT_STREAM: Final = "text/event-stream"

PUBLIC_OPERATIONS: Final = frozenset(
    {"/healthz", "/readyz", "/dev/jwks.json", "/.well-known/jwks.json"}
)
"""Paths anyone may call: no credential, no 401/403."""
RATE_LIMITED_PREFIXES: Final = ("/v1/chat", "/v1/search", "/v1/documents")
PROVIDER_PATHS: Final = frozenset({"/v1/chat", "/v1/chat/completions"})
UNAVAILABLE_PATHS: Final = frozenset({"/readyz", "/v1/auth/token"})
"""Answer 503 of their own: a dependency down; token exchange not configured."""
STORAGE_PATHS: Final = ("/v1/documents", "/v1/search", "/v1/chat", "/v1/conversations")

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "An RFC 9457 problem: every error the service answers has this shape.",
    "required": ["type", "title", "status", "code", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "examples": ["urn:bulkhead:problem:validation_error"]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "Stable error code; branch on this."},
        "detail": {"type": "string", "description": "What is wrong, naming the field."},
        "instance": {"type": "string", "description": "The request path."},
        "errors": {
            "type": "array",
            "description": "One entry per offending field.",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "key": {
                        "type": "string",
                        "description": "The field: a JSON path (`documents[0].metadata.x`),"
                        " a parameter name, or a multipart part (`files[0].filename`).",
                    },
                    "source": {"type": "string", "enum": ["body", "query", "path", "header"]},
                    "message": {"type": "string"},
                    "filename": {"type": "string"},
                },
            },
        },
        "error": {
            "type": "object",
            "description": "OpenAI-shaped copy on `/v1/chat/completions`, for the OpenAI SDKs.",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        },
    },
}

PROBLEMS: Final[dict[int, tuple[str, tuple[str, ...]]]] = {
    400: (
        "The request cannot be decoded: not JSON, not UTF-8, a lone surrogate, JSON nested"
        " too deep, a percent-escape that is not UTF-8.",
        ("malformed_request",),
    ),
    401: ("No valid credential.", ("unauthenticated",)),
    403: (
        "The credential lacks the role, or the request names another tenant.",
        ("forbidden", "tenant_mismatch", "acl_excludes_caller"),
    ),
    404: (
        "Nothing by that id in the caller's tenant (another tenant's ids look the same).",
        ("not_found", "model_not_found"),
    ),
    408: ("The request body did not arrive in time.", ("request_timeout",)),
    413: ("Over a documented size limit.", ("payload_too_large",)),
    415: ("A body or file in a format the endpoint does not take.", ("unsupported_media_type",)),
    422: (
        "The request decodes but breaks a rule: unknown or missing field, wrong type, value"
        " out of range, a NUL character.",
        ("validation_error", "unreadable_file", "unsupported_parameter"),
    ),
    429: (
        "Over the tenant's, user's or key's request rate, or the day's token budget.",
        ("rate_limited", "quota_exceeded"),
    ),
    502: ("Every provider refused the request as built.", ("provider_rejected_request",)),
    503: (
        "A dependency is down; retry after `Retry-After` seconds.",
        (
            "unavailable",
            "providers_unavailable",
            "vectors_unavailable",
            "secrets_unavailable",
            "database_unavailable",
        ),
    ),
}
"""Status -> (meaning, the `code` values it carries)."""


def statuses_for(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    """The problem statuses an operation can answer, by rule."""
    statuses = set()
    public = path in PUBLIC_OPERATIONS
    if not public:
        statuses |= {401, 403}
    takes_input = bool(operation.get("parameters")) or "requestBody" in operation
    if takes_input:
        statuses |= {400, 422}
    if "requestBody" in operation:
        statuses |= {408, 413}
    if "{" in path or (method == "post" and path.endswith("/rotate")):
        statuses.add(404)
    if path == "/v1/documents" and method == "post":
        statuses.add(415)
    if path.startswith(RATE_LIMITED_PREFIXES):
        statuses.add(429)
    if path in PROVIDER_PATHS and method == "post":
        statuses |= {502, 503}
        statuses.add(404)  # a `model` or conversation that does not exist
    elif path.startswith(STORAGE_PATHS) and not public:
        statuses.add(503)
    if path in UNAVAILABLE_PATHS:
        statuses.add(503)
    return sorted(statuses)


def problem_response(status: int) -> dict[str, Any]:
    """The response object for one problem status, its codes and an example."""
    meaning, codes = PROBLEMS[status]
    return {
        "description": f"{meaning} `code`: {', '.join(f'`{c}`' for c in codes)}.",
        "content": {
            PROBLEM_JSON: {
                "schema": {"$ref": "#/components/schemas/Problem"},
                "example": {
                    "type": f"urn:bulkhead:problem:{codes[0]}",
                    "title": codes[0].replace("_", " ").capitalize(),
                    "status": status,
                    "code": codes[0],
                    "detail": "what is wrong, naming the field",
                    "instance": "/v1/...",
                },
            }
        },
    }


def msgspec_schema(struct: type, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a msgspec type, its definitions added to `components`."""
    (schema,), definitions = msgspec.json.schema_components(
        [struct], ref_template="#/components/schemas/{name}"
    )
    for name, definition in definitions.items():
        components.setdefault(name, definition)
    return schema


def ingest_body(components: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/documents`: JSON documents, or files as multipart/form-data."""
    json_schema = msgspec_schema(IngestRequest, components)
    text_field = {"type": "string", "maxLength": 65536}
    return {
        "required": True,
        "description": "JSON documents, or uploaded files (all or nothing either way).",
        "content": {
            "application/json": {
                "schema": json_schema,
                "example": {
                    "documents": [
                        {
                            "id": "vacation-policy",
                            "title": "Vacation policy",
                            "text": "Every full-time employee receives 25 vacation days.",
                            "metadata": {"dept": "hr"},
                            "acl": {"groups": ["hr"]},
                        }
                    ]
                },
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "description": "One or more files (text, Markdown, HTML, PDF);"
                            f" names at most {MAX_FILENAME_CHARS} characters.",
                            "items": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            },
                        },
                        "id": {
                            "type": "array",
                            "items": text_field,
                            "description": "Once per file, in file order.",
                        },
                        "title": {
                            "type": "array",
                            "items": text_field,
                            "description": "Once per file, in file order.",
                        },
                        "metadata": {
                            **text_field,
                            "description": "A JSON object, for all files or once per file.",
                        },
                        "acl": {**text_field, "description": 'A JSON object `{"groups": [...]}`.'},
                        "tenant_id": text_field,
                    },
                },
                "encoding": {"file": {"contentType": "application/octet-stream"}},
            },
        },
    }


def completions_body(components: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/chat/completions`: the OpenAI request subset Bulkhead serves."""
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": msgspec_schema(CompletionsRequest, components),
                "example": {
                    "model": "auto",
                    "messages": [{"role": "user", "content": "How many vacation days do I get?"}],
                },
            }
        },
    }


SECURITY_SCHEMES: Final[dict[str, Any]] = {
    "bearerJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT from the tenant's identity provider (or a service token from"
        " `POST /v1/auth/token`); the tenant comes only from it.",
    },
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "bk_<id>_<secret>",
        "description": "A Bulkhead API key (`bk_...`) sent as the bearer credential.",
    },
}

EXAMPLES: Final[dict[tuple[str, str], Any]] = {
    ("/v1/search", "post"): {
        "query": "where do visitors park",
        "top_k": 3,
        "filter": {"dept": {"in": ["facilities", "hr"]}},
    },
    ("/v1/chat", "post"): {"message": "How many vacation days do I get?", "stream": False},
    ("/v1/admin/api-keys", "post"): {
        "name": "ingest bot",
        "scopes": ["ingest"],
        "allowed_cidrs": ["10.0.0.0/8"],
    },
    ("/v1/admin/api-keys/{key_id}/rotate", "post"): {"grace_seconds": 3600},
}
"""Request body examples by (path, method)."""


def sse_event_schema(path: str) -> dict[str, Any]:
    """One server-sent event of a streamed chat answer (`stream: true`)."""
    if path == "/v1/chat":
        description = (
            "`meta` (conversation_id, message_id, trace_id), `passages` (every passage the"
            " model was given, numbered as the answer's `[n]` markers), `delta` ({text})"
            " repeated, then `citations` (the cited passages, as in a plain answer) and `done`"
            " (usage, provider, model, cited), or `error` ({code, message}); `data` is JSON."
        )
        event: dict[str, Any] = {
            "type": "string",
            "enum": ["meta", "passages", "delta", "citations", "done", "error"],
        }
    else:
        description = (
            "OpenAI `chat.completion.chunk` objects as JSON `data`, then `[DONE]`; a stream that"
            ' breaks ends with an `{"error": ...}` event and no `[DONE]`.'
        )
        event = {"type": "string"}
    return {
        "type": "object",
        "description": description,
        "required": ["data"],
        "properties": {
            "event": event,
            "data": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    }
