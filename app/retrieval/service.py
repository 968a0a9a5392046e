"""Documents and search: ingestion into Postgres and the vector index, listing, deletion, search."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from app.config import ChunkingSettings, LimitSettings
from app.db.pool import tenant_transaction
from app.llm.embeddings import OpenAIEmbedder
from app.privacy.redact import RedactionKind, redact_fields
from app.problems import NotFound, PayloadTooLarge, ValidationFailed
from app.retrieval import acl, repository
from app.retrieval.chunking import chunk_text
from app.retrieval.embedders import TenantEmbedders, chunk_embedding_text
from app.retrieval.schemas import DocumentIn
from app.telemetry.spans import scoped_span
from app.tenancy.scope import TenantScope
from app.vectors.edge import EdgeIndex
from app.vectors.filters import check_metadata_key, parse_filter
from app.vectors.index import ChunkRecord, DocumentVersion, Hit, VectorIndex

MAX_METADATA_LIST = 100
MAX_METADATA_STRING = 1_000
# C0/C1 control characters other than tab and newline: never text, and NUL breaks Postgres.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def normalise_text(text: str) -> str:
    """The form of a document's text that is hashed, chunked and indexed.

    Every ingestion path (JSON, uploads, the sample corpus) goes through here exactly once,
    so a transformation of document text belongs in this function.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    """A validated document, chunked and ready to write."""

    id: str
    title: str
    metadata: dict[str, Any]
    acl_groups: tuple[str, ...] | None
    content_sha256: str
    chunks: list[tuple[int, str, str]]
    """(index, section, text) per chunk."""


class DocumentService:
    """Ingests, lists, deletes and searches a tenant's documents."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        index: VectorIndex,
        limits: LimitSettings,
        chunking: ChunkingSettings,
        redaction: Callable[[str], frozenset[RedactionKind]] = lambda _: frozenset(),
        embedders: TenantEmbedders | None = None,
    ) -> None:
        self._pool = pool
        self._redaction = redaction
        self._index = index
        self._embedders = embedders
        self._limits = limits
        self._chunking = chunking

    @property
    def limits(self) -> LimitSettings:
        """The input bounds this service enforces."""
        return self._limits

    def prepare(self, documents: list[DocumentIn]) -> list[PreparedDocument]:
        """Validate and chunk a batch before anything is written.

        Raises:
            ValidationFailed: A field breaks a rule (reserved metadata key, duplicate id...).
            PayloadTooLarge: Too many documents, or one over the size limit.
        """
        limits = self._limits
        if len(documents) > limits.max_documents_per_request:
            raise PayloadTooLarge(
                f"at most {limits.max_documents_per_request} documents per request"
            )
        prepared: list[PreparedDocument] = []
        seen: set[str] = set()
        for position, document in enumerate(documents):
            where = f"documents[{position}]"
            text = normalise_text(document.text)
            if len(text) > limits.max_document_chars:
                raise PayloadTooLarge(
                    f"{where}.text: at most {limits.max_document_chars} characters"
                )
            if len(document.title) > limits.max_title_chars:
                raise ValidationFailed(
                    f"{where}.title: at most {limits.max_title_chars} characters"
                )
            if "\x00" in document.title:
                raise ValidationFailed(f"{where}.title: NUL characters are not allowed")
            _check_metadata(document.metadata, where=f"{where}.metadata", limits=limits)
            document_id = document.id or uuid.uuid4().hex
            if acl.KEY_SEPARATOR in document_id:
                # Only the sample corpus builds ids unchecked; the API's pattern excludes it.
                raise ValidationFailed(f"{where}.id: {acl.KEY_SEPARATOR!r} is not allowed")
            if document_id in seen:
                raise ValidationFailed(f"{where}.id: {document_id!r} appears twice in this request")
            seen.add(document_id)
            chunks = chunk_text(
                text,
                target_chars=self._chunking.target_chars,
                overlap_chars=self._chunking.overlap_chars,
            )
            if not chunks:
                raise ValidationFailed(f"{where}.text: no indexable text")
            prepared.append(
                PreparedDocument(
                    id=document_id,
                    title=document.title,
                    metadata=document.metadata,
                    acl_groups=tuple(sorted(set(document.acl.groups))) if document.acl else None,
                    content_sha256=hashlib.sha256(text.encode()).hexdigest(),
                    chunks=[(c.index, c.section, c.text) for c in chunks],
                )
            )
        return prepared

    async def ingest(
        self, *, scope: TenantScope, documents: list[PreparedDocument]
    ) -> list[tuple[str, int]]:
        """Write a prepared batch: all of it or, on failure, none of it.

        Each document replaces every document under its id the caller can see, or is created
        when the caller sees none; documents the caller cannot see are never touched (see
        `app/retrieval/acl.py`). Its new version is indexed *pending* (invisible to search) and
        its row saved in one transaction that holds the ids' locks; after the commit the batch
        is published: its versions revealed and their predecessors removed in one step for
        searches, so a re-ingested document is never seen twice nor missing. A dense embedder
        embeds every chunk before anything is written.

        Returns:
            (document id, chunk count) per document.

        Raises:
            AclExcludesCaller: A document's ACL leaves the caller out (nothing was written).
            ProvidersUnavailable: The tenant's embeddings model failed (nothing was written).
            ProviderRejected: The embeddings model refused the input (nothing was written).
        """
        acl.check_writable(scope, [(d.id, d.acl_groups) for d in documents])
        with scoped_span(
            "ingest documents", scope=scope, attributes={"bulkhead.documents": len(documents)}
        ):
            # Before anything is indexed: credentials pasted into a document never reach
            # the vector store or an embeddings provider (manifest `privacy.redact`).
            documents = redact_fields(documents, self._redaction(scope.tenant_id))
            index, embedder, _ = self._route(scope)
            vectors = None
            if embedder is not None:
                texts = [text for document in documents for text in _chunk_texts(document)]
                vectors = (await embedder.embed(texts, scope=scope)).vectors
            async with tenant_transaction(self._pool, scope=scope) as connection:
                stored = await repository.lock_named(connection, [d.id for d in documents])
                written = [
                    _Write(d, acl.target(scope, d.id, stored.get(d.id, ()))) for d in documents
                ]
                retired = [key for w in written for key in w.target.retired]
                try:
                    await index.upsert(
                        scope=scope,
                        chunks=_batch_records(scope, written, vectors),
                        pending=True,
                    )
                    await repository.save_all(
                        connection,
                        tenant_id=scope.tenant_id,
                        created_by=scope.subject,
                        rows=[_row(w) for w in written],
                    )
                    if retired:
                        # Merged into the kept key: removed like a DELETE, vectors before the
                        # rows commit (a failure leaves the rows for a retry, never orphans).
                        await repository.delete_keys(connection, retired)
                        for key in retired:
                            await index.delete_document(scope=scope, document_id=key)
                except BaseException:
                    for w in written:
                        await index.delete_document(
                            scope=scope, document_id=w.target.key, version=w.target.version
                        )
                    raise
            await index.publish(
                scope=scope,
                versions=[
                    DocumentVersion(w.target.key, w.target.version, w.document.acl_groups)
                    for w in written
                ],
            )
        return [(d.id, len(d.chunks)) for d in documents]

    async def list_page(
        self, *, scope: TenantScope, cursor: str | None, limit: int
    ) -> tuple[list[repository.DocumentRow], str | None]:
        """One page of the tenant's documents visible to the caller, and the next cursor.

        Documents sharing an id (see `app/retrieval/acl.py`) follow each other, each once.

        Raises:
            ValidationFailed: The cursor is not one this service issued.
        """
        after = _decode_cursor(cursor) if cursor else None
        async with tenant_transaction(self._pool, scope=scope) as connection:
            rows = await repository.page(
                connection, after=after, limit=limit + 1, groups=scope.groups
            )
        next_cursor = _encode_cursor(rows[limit - 1].key) if len(rows) > limit else None
        return rows[:limit], next_cursor

    async def delete(self, *, scope: TenantScope, document_id: str) -> None:
        """Delete every document under `document_id` the caller can see: rows and vectors.

        Raises:
            NotFound: The caller sees no such document: none, one it may not see, or another
                tenant's all get this same answer, and nothing is changed.
        """
        async with tenant_transaction(self._pool, scope=scope) as connection:
            keys = await repository.delete_visible(
                connection, name=document_id, groups=scope.groups
            )
            if not keys:
                raise NotFound(f"no document {document_id!r}")
            # Vectors go before the rows commit: if this fails the rows stay and the
            # client can retry; the reverse order could leave orphaned vectors.
            index, _, _ = self._route(scope)
            for key in keys:
                await index.delete_document(scope=scope, document_id=key)

    async def search(
        self,
        *,
        scope: TenantScope,
        query: str,
        top_k: int | None,
        raw_filter: dict[str, Any] | None,
    ) -> list[Hit]:
        """The best chunks for `query` among those the caller may read.

        Raises:
            ValidationFailed: Query too long, top_k out of bounds, or an invalid filter.
        """
        limits = self._limits
        if len(query) > limits.max_query_chars:
            raise ValidationFailed(f"query: at most {limits.max_query_chars} characters")
        k = limits.default_top_k if top_k is None else top_k
        if not 1 <= k <= limits.max_top_k:
            raise ValidationFailed(f"top_k: between 1 and {limits.max_top_k}")
        matches = parse_filter(raw_filter)
        index, embedder, kind = self._route(scope)
        with scoped_span(
            f"retrieval {kind}",
            scope=scope,
            attributes={
                "bulkhead.retrieval.top_k": k,
                "bulkhead.retrieval.filtered": bool(matches),
            },
        ) as span:
            if embedder is None:
                hits = await index.search(scope=scope, query=query, top_k=k, matches=matches)
            else:
                # The query leaves for the embeddings provider: redact it (BM25 stays local).
                sent = redact_fields(query, self._redaction(scope.tenant_id))
                dense = (await embedder.embed([sent], scope=scope)).vectors[0]
                hits = await index.search(
                    scope=scope,
                    query=query,
                    top_k=k,
                    matches=matches,
                    dense=dense,
                    lexical=kind == "hybrid",
                )
            span.set_attribute("bulkhead.retrieval.hits", len(hits))
        # The vectors carry the document's key; callers know its id.
        return [
            replace(hit, document_id=acl.document_name(hit.document_id))
            if acl.KEY_SEPARATOR in hit.document_id
            else hit
            for hit in hits
        ]

    def _route(self, scope: TenantScope) -> tuple[VectorIndex, OpenAIEmbedder | None, str]:
        """The tenant's index, its dense embedder (None: BM25 only) and the embedder kind."""
        if self._embedders is None:
            return self._index, None, "bm25"
        route = self._embedders.route(scope)
        return route.index, route.embedder, route.spec.kind


@dataclass(frozen=True, slots=True)
class _Write:
    """A document of a batch and where its new version goes."""

    document: PreparedDocument
    target: acl.Target


def _chunk_texts(document: PreparedDocument) -> list[str]:
    return [
        chunk_embedding_text(document.title, section, text) for _, section, text in document.chunks
    ]


def _records(
    scope: TenantScope, write: _Write, dense: list[list[float]] | None = None
) -> list[ChunkRecord]:
    document, key, version = write.document, write.target.key, write.target.version
    return [
        ChunkRecord(
            chunk_id=EdgeIndex.point_id(scope.tenant_id, key, version, index),
            document_id=key,
            version=version,
            index=index,
            title=document.title,
            section=section,
            text=text,
            metadata=document.metadata,
            acl_groups=document.acl_groups,
            dense=dense[position] if dense is not None else None,
        )
        for position, (index, section, text) in enumerate(document.chunks)
    ]


def _batch_records(
    scope: TenantScope, written: list[_Write], vectors: list[list[float]] | None
) -> list[ChunkRecord]:
    records: list[ChunkRecord] = []
    for write in written:
        count = len(write.document.chunks)
        dense = vectors[len(records) : len(records) + count] if vectors else None
        records += _records(scope, write, dense)
    return records


def _row(write: _Write) -> repository.DocumentVersionRow:
    document = write.document
    return repository.DocumentVersionRow(
        document_id=write.target.key,
        title=document.title,
        metadata=document.metadata,
        acl_groups=list(document.acl_groups) if document.acl_groups else None,
        chunk_count=len(document.chunks),
        content_sha256=document.content_sha256,
        version=write.target.version,
    )


def _check_metadata(metadata: dict[str, Any], *, where: str, limits: LimitSettings) -> None:
    if len(metadata) > limits.max_metadata_keys:
        raise ValidationFailed(f"{where}: at most {limits.max_metadata_keys} keys")
    for key, value in metadata.items():
        check_metadata_key(key, where=f"{where}.{key}")
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_METADATA_LIST or not all(_is_metadata_scalar(v) for v in values):
            raise ValidationFailed(
                f"{where}.{key}: a string (≤ {MAX_METADATA_STRING} chars, no NUL), number, boolean,"
                f" or a list of up to {MAX_METADATA_LIST} of them",
                errors=[{"key": f"{where}.{key}", "message": "invalid value"}],
            )


def _is_metadata_scalar(value: Any) -> bool:
    if isinstance(value, str):
        # Postgres text and jsonb cannot hold NUL.
        return len(value) <= MAX_METADATA_STRING and "\x00" not in value
    return isinstance(value, bool | int | float)


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed("cursor: not a cursor returned by this endpoint") from exc
    if "\x00" in decoded:  # a forged cursor: Postgres text cannot hold NUL
        raise ValidationFailed("cursor: not a cursor returned by this endpoint")
    return decoded
