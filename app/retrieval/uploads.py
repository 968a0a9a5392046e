"""Reading `POST /v1/documents` bodies within the limits, before anything is parsed or written.

The route has no framework-wide body limit because its two encodings have different ones
(`max_request_bytes` for JSON, `max_upload_bytes` for multipart): this module enforces the
right one itself, first on the announced Content-Length and then on the bytes actually
received, so an oversized body is refused (413) while it streams in, never buffered whole.
Multipart parts are split by `multipart` (the parser Litestar itself uses) as they arrive, and
the file count and per-file size limits stop the upload at the first part that breaks them.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import msgspec
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from app.config import LimitSettings
from app.edge.fields import describe, msgspec_errors
from app.edge.text import JsonRules, decode_json
from app.problems import ApiError, PayloadTooLarge, ValidationFailed
from app.retrieval.parsing import detect_format, document_id_from_filename, parse_file
from app.retrieval.schemas import DocumentIn

FILE_FIELD = "file"
FORM_FIELDS = frozenset({"id", "title", "metadata", "acl", "tenant_id"})
MAX_FIELD_BYTES = 64 * 1024
"""A text form field (metadata or ACL JSON, an id, a title)."""
_MAX_FIELDS_PER_FILE = len(FORM_FIELDS)
_DOCUMENTS = re.compile(r"\bdocuments\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """One file part of a multipart upload."""

    filename: str
    content_type: str | None
    data: bytes


@dataclass(slots=True)
class UploadForm:
    """A multipart upload: its files in order, and its text fields by name (in order)."""

    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def _check_announced(headers: Any, limit: int) -> None:
    announced = headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")


async def _bounded(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        yield chunk


async def read_bounded_body(headers: Any, chunks: AsyncIterator[bytes], *, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit` bytes.

    Raises:
        PayloadTooLarge: Announced or received length over `limit`.
    """
    _check_announced(headers, limit)
    return b"".join([chunk async for chunk in _bounded(chunks, limit)])


async def read_upload(
    headers: Any, chunks: AsyncIterator[bytes], *, boundary: str, limits: LimitSettings
) -> UploadForm:
    """Split a multipart/form-data body into files and fields, enforcing the upload limits.

    File parts must be named `file` (repeatable); the other parts are text fields among
    `FORM_FIELDS`. Anything else is refused rather than ignored.

    Raises:
        PayloadTooLarge: Body over `max_upload_bytes`, a file over `max_file_bytes`, or more
            than `max_files_per_request` files.
        ValidationFailed: Malformed multipart, an unknown part, an oversized text field.
    """
    _check_announced(headers, limits.max_upload_bytes)
    form = UploadForm()
    max_parts = limits.max_files_per_request * (1 + _MAX_FIELDS_PER_FILE) + 1
    try:
        with PushMultipartParser(
            boundary.encode("latin-1"),
            max_segment_size=limits.max_file_bytes,
            max_segment_count=max_parts,
        ) as parser:
            segment: MultipartSegment | None = None
            buffer = bytearray()
            async for chunk in _bounded(chunks, limits.max_upload_bytes):
                if parser.closed:
                    break
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment, buffer = event, bytearray()
                        _check_part(event, form, limits)
                    elif event:
                        buffer.extend(event)
                        is_field = segment is not None and segment.filename is None
                        if is_field and len(buffer) > MAX_FIELD_BYTES:
                            raise ValidationFailed(f"a form field is over {MAX_FIELD_BYTES} bytes")
                    elif segment is not None:
                        _store(segment, bytes(buffer), form)
                        segment = None
    except ParserLimitReached as exc:
        raise PayloadTooLarge(
            f"a file is over {limits.max_file_bytes} bytes, or the form has too many parts"
        ) from exc
    except ParserError as exc:
        raise ValidationFailed(f"malformed multipart/form-data body: {exc}") from exc
    if not form.files:
        raise ValidationFailed(f"no file: send one or more parts named {FILE_FIELD!r}")
    return form


def _check_part(segment: MultipartSegment, form: UploadForm, limits: LimitSettings) -> None:
    if segment.filename is not None:
        if segment.name != FILE_FIELD:
            raise ValidationFailed(
                f"file part {segment.name!r}: files go in parts named {FILE_FIELD!r}"
            )
        if len(form.files) >= limits.max_files_per_request:
            raise PayloadTooLarge(f"at most {limits.max_files_per_request} files per request")
    elif segment.name not in FORM_FIELDS:
        known = ", ".join(sorted(FORM_FIELDS | {FILE_FIELD}))
        raise ValidationFailed(
            f"unknown form field {segment.name!r}; the fields are {known}",
            errors=[{"key": str(segment.name), "message": "unknown field"}],
        )


def _store(segment: MultipartSegment, data: bytes, form: UploadForm) -> None:
    if segment.filename is not None:
        form.files.append(UploadedFile(segment.filename, segment.content_type, data))
        return
    try:
        value = data.decode(segment.charset or "utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise ValidationFailed(f"form field {segment.name!r}: not UTF-8 text") from exc
    form.fields[str(segment.name)].append(value)


async def upload_documents(
    form: UploadForm, *, limits: LimitSettings
) -> tuple[str | None, list[DocumentIn]]:
    """The documents an upload describes (one per file) and its optional `tenant_id` field.

    `id` and `title` are given once per file, in file order, or not at all (ids then come
    from the file names, titles from the files or their names); `metadata` and `acl` are
    JSON objects given once for every file or once per file. Every file is parsed here, before
    anything is written, so one bad file refuses the whole upload.

    Raises:
        UnsupportedMediaType: A file of a type Bulkhead does not parse.
        UnreadableFile: A file whose content cannot be read.
        ValidationFailed: A field is malformed, repeated the wrong number of times, or invalid.
        PayloadTooLarge: A PDF over the page limit.
    """
    count = len(form.files)
    tenant = _single(form.fields, "tenant_id")
    ids = _per_file(form.fields, "id", count, shared=False)
    titles = _per_file(form.fields, "title", count, shared=False)
    metadata = _per_file(form.fields, "metadata", count, shared=True)
    acls = _per_file(form.fields, "acl", count, shared=True)
    documents: list[DocumentIn] = []
    for position, upload in enumerate(form.files):
        where = f"files[{position}]"
        try:
            file_format = detect_format(upload.filename, upload.content_type)
            parsed = await asyncio.to_thread(
                parse_file, upload.data, file_format=file_format, max_pdf_pages=limits.max_pdf_pages
            )
        except ApiError as exc:
            exc.detail = f"{where} ({upload.filename!r}): {exc.detail}"
            exc.errors = [{"key": where, "filename": upload.filename, "message": exc.detail}]
            raise
        if not parsed.text.strip():
            raise ValidationFailed(
                f"{where} ({upload.filename!r}): no text found (a scanned PDF needs OCR first)",
                errors=[{"key": where, "filename": upload.filename, "message": "no text"}],
            )
        document_id = ids[position] if ids else document_id_from_filename(upload.filename)
        if not document_id:
            raise ValidationFailed(
                f"{where}: no document id can be derived from {upload.filename!r}; send `id`"
            )
        fallback_title = PurePosixPath(upload.filename.replace("\\", "/")).stem or document_id
        raw: dict[str, Any] = {
            "id": document_id,
            "title": titles[position] if titles else (parsed.title or fallback_title),
            "text": parsed.text,
        }
        if metadata:
            raw["metadata"] = _json_object(metadata[position], where=f"{where}.metadata")
        if acls:
            raw["acl"] = _json_object(acls[position], where=f"{where}.acl")
        try:
            documents.append(msgspec.convert(raw, DocumentIn))
        except msgspec.ValidationError as exc:
            errors = msgspec_errors(exc, root=where)
            raise ValidationFailed(
                f"{describe(errors)} (file {upload.filename!r})",
                errors=[{**e, "filename": upload.filename} for e in errors],
            ) from exc
    return tenant, documents


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name, [])
    if len(values) > 1:
        raise ValidationFailed(f"form field {name!r}: at most once")
    return values[0] if values else None


def _per_file(fields: dict[str, list[str]], name: str, count: int, *, shared: bool) -> list[str]:
    values = fields.get(name, [])
    if not values or len(values) == count:
        return values
    if shared and len(values) == 1:
        return values * count
    once = "once for all files or " if shared else ""
    raise ValidationFailed(
        f"form field {name!r}: given {len(values)} times for {count} files;"
        f" give it {once}once per file, in file order"
    )


def _json_object(value: str, *, where: str) -> dict[str, Any]:
    # The edge's decoder: the same depth bound and NUL refusal as a JSON body.
    decoded = decode_json(value, rules=JsonRules(), where=where)
    if not isinstance(decoded, dict):
        raise ValidationFailed(f"{where}: must be a JSON object")
    return decoded


@contextmanager
def named_by_file() -> Iterator[None]:
    """Name an upload's fields by file: `files[0].title`, as the caller sent them.

    The documents an upload becomes are checked like JSON ones, whose messages say
    `documents[0]`; an upload has no `documents`, it has files.

    Raises:
        ApiError: The error raised inside, its detail and field names rewritten.
    """
    try:
        yield
    except ApiError as exc:
        exc.detail = _DOCUMENTS.sub(r"files[\1]", exc.detail)
        for error in exc.errors or []:
            if isinstance(error.get("key"), str):
                error["key"] = _DOCUMENTS.sub(r"files[\1]", error["key"])
        raise
