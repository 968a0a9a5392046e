"""HTTP endpoints for documents and search (docs/api.md, docs/ingestion.md)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.edge.guards import ensure_own_tenant, requires
from app.problems import UnsupportedMediaType
from app.retrieval.schemas import (
    Acl,
    DocumentOut,
    DocumentPage,
    IngestedDocument,
    IngestResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
    decode_ingest_request,
)
from app.retrieval.service import DocumentService
from app.retrieval.uploads import (
    named_by_file,
    read_bounded_body,
    read_upload,
    upload_documents,
)
from app.tenancy.scope import Role, TenantScope


class DocumentController(Controller):
    """`/v1/documents`."""

    path = "/v1/documents"

    # No framework-wide body limit here: JSON and multipart have different ones, which
    # `uploads` enforces while the body streams in (413 before it is buffered).
    @post(guards=[requires(Role.INGEST)], status_code=HTTP_201_CREATED, request_max_body_size=None)
    async def ingest(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[TenantScope],
        documents: NamedDependency[DocumentService],
    ) -> IngestResponse:
        """Ingest JSON documents or uploaded files (all or nothing)."""
        media_type, options = request.content_type
        limits = documents.limits
        if media_type == "multipart/form-data":
            form = await read_upload(
                request.headers,
                request.stream(),
                boundary=options.get("boundary", ""),
                limits=limits,
            )
            tenant_id, incoming = await upload_documents(form, limits=limits)
            ensure_own_tenant(caller, tenant_id)
        elif media_type == "application/json" or media_type.endswith("+json"):
            body = await read_bounded_body(
                request.headers, request.stream(), limit=limits.max_request_bytes
            )
            data = decode_ingest_request(body)
            ensure_own_tenant(caller, data.tenant_id)
            incoming = data.documents
        else:
            raise UnsupportedMediaType(
                f"{media_type or 'no content type'}: send application/json or multipart/form-data"
            )
        for document in incoming:
            ensure_own_tenant(caller, document.tenant_id)
        uploaded = media_type == "multipart/form-data"
        with named_by_file() if uploaded else nullcontext():
            prepared = documents.prepare(incoming)
        written = await documents.ingest(scope=caller, documents=prepared)
        return IngestResponse([IngestedDocument(id=i, chunks=n) for i, n in written])

    @get(guards=[requires(Role.SEARCH)])
    async def list_documents(
        self,
        caller: NamedDependency[TenantScope],
        documents: NamedDependency[DocumentService],
        cursor: Annotated[str | None, Parameter(max_length=400)] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    ) -> DocumentPage:
        """List the caller's visible documents, ordered by id."""
        rows, next_cursor = await documents.list_page(scope=caller, cursor=cursor, limit=limit)
        return DocumentPage(
            documents=[
                DocumentOut(
                    id=row.id,
                    title=row.title,
                    metadata=row.metadata,
                    acl=Acl(groups=row.acl_groups) if row.acl_groups else None,
                    chunks=row.chunk_count,
                    version=row.version,
                    created_at=row.created_at.isoformat(),
                    updated_at=row.updated_at.isoformat(),
                )
                for row in rows
            ],
            next_cursor=next_cursor,
        )

    @delete("/{document_id:str}", guards=[requires(Role.INGEST)], status_code=HTTP_204_NO_CONTENT)
    async def delete_document(
        self,
        document_id: Annotated[str, Parameter(max_length=128)],
        caller: NamedDependency[TenantScope],
        documents: NamedDependency[DocumentService],
    ) -> None:
        """Delete a document and its vectors."""
        await documents.delete(scope=caller, document_id=document_id)


class SearchController(Controller):
    """`/v1/search`."""

    path = "/v1/search"

    @post(guards=[requires(Role.SEARCH)], status_code=200)
    async def search(
        self,
        data: JSONBody[SearchRequest],
        request: Request[TenantScope, Any, Any],
        documents: NamedDependency[DocumentService],
    ) -> SearchResponse:
        """Retrieve the best chunks for a query within the caller's tenant and groups."""
        # The caller comes from the request, not the `caller` dependency: with two dependencies
        # Litestar resolves them in an anyio TaskGroup per request (litestar#4563), ~8% of a
        # search. The value is the same (`provide_scope` returns `request.user`).
        caller = request.user
        ensure_own_tenant(caller, data.tenant_id)
        hits = await documents.search(
            scope=caller, query=data.query, top_k=data.top_k, raw_filter=data.filter
        )
        return SearchResponse(
            results=[
                SearchResult(
                    document_id=hit.document_id,
                    chunk_id=hit.chunk_id,
                    title=hit.title,
                    text=hit.text,
                    score=hit.score,
                    metadata=hit.metadata,
                )
                for hit in hits
            ]
        )
