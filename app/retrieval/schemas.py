"""Request and response bodies of the documents and search endpoints."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.edge.fields import describe, msgspec_errors
from app.problems import ValidationFailed

DocumentId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Group = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class Acl(msgspec.Struct, forbid_unknown_fields=True):
    """Groups allowed to read a document; absent means the whole tenant."""

    groups: Annotated[list[Group], msgspec.Meta(min_length=1, max_length=100)]


class DocumentIn(msgspec.Struct, forbid_unknown_fields=True):
    """One document to ingest."""

    title: Annotated[str, msgspec.Meta(min_length=1)]
    text: Annotated[str, msgspec.Meta(min_length=1)]
    id: DocumentId | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    acl: Acl | None = None
    tenant_id: str | None = None
    """Optional assertion of the caller's own tenant; another tenant's id is refused (403)."""


class IngestRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/documents` body."""

    documents: Annotated[list[DocumentIn], msgspec.Meta(min_length=1)]
    tenant_id: str | None = None


def decode_ingest_request(body: bytes) -> IngestRequest:
    """Decode and validate a JSON `POST /v1/documents` body.

    Raises:
        ValidationFailed: Not JSON, or not the documented shape.
    """
    try:
        return msgspec.json.decode(body, type=IngestRequest)
    except msgspec.ValidationError as exc:
        errors = msgspec_errors(exc)
        raise ValidationFailed(describe(errors), errors=errors) from exc
    except msgspec.DecodeError as exc:
        raise ValidationFailed(f"the request body is not JSON: {exc}") from exc


class IngestedDocument(msgspec.Struct):
    """Result for one ingested document."""

    id: str
    chunks: int


class IngestResponse(msgspec.Struct):
    """`POST /v1/documents` response."""

    documents: list[IngestedDocument]


class DocumentOut(msgspec.Struct):
    """A document as listed."""

    id: str
    title: str
    metadata: dict[str, Any]
    acl: Acl | None
    chunks: int
    version: int
    created_at: str
    updated_at: str


class DocumentPage(msgspec.Struct):
    """One page of `GET /v1/documents`."""

    documents: list[DocumentOut]
    next_cursor: str | None


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/search` body."""

    query: Annotated[str, msgspec.Meta(min_length=1)]
    top_k: int | None = None
    filter: dict[str, Any] | None = None
    tenant_id: str | None = None


class SearchResult(msgspec.Struct):
    """One search hit."""

    document_id: str
    chunk_id: str
    title: str
    text: str
    score: float
    metadata: dict[str, Any]


class SearchResponse(msgspec.Struct):
    """`POST /v1/search` response."""

    results: list[SearchResult]
