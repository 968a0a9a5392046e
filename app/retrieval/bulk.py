"""Bulk ingestion of files through a running service's `POST /v1/documents` (multipart).

The CLI talks to the service over HTTP instead of opening the stores: the Qdrant Edge shard
belongs to the service process that opened it, and the HTTP path is the one that authenticates,
enforces the limits, audits and publishes new versions atomically.

Resume: a journal (JSON lines) records each file the service confirmed, with the SHA-256 of
its bytes. A rerun skips a file whose document id is journalled with the same hash, so an
interrupted run picks up where it stopped. A batch confirmed by the service but not yet
journalled when the run was stopped is sent again on the rerun, which replaces those documents
(a new version) rather than duplicating them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.retrieval.parsing import FORMAT_BY_EXTENSION, document_id_from_filename

_CONTENT_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_FATAL_STATUSES = frozenset({401, 403})
MAX_ATTEMPTS = 4
MAX_RETRY_WAIT_SECONDS = 30.0


class FatalIngestError(Exception):
    """A failure no other file could escape (bad credential, service unreachable)."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to ingest and the document id it gets."""

    path: Path
    document_id: str
    upload_name: str
    """The name sent with the file: its path relative to the argument it was found under."""


@dataclass(frozen=True, slots=True)
class FileFailure:
    """A file that was not ingested, and why."""

    path: Path
    reason: str


@dataclass(slots=True)
class IngestReport:
    """What a run did so far (kept up to date, so an interrupted run can still report)."""

    total: int = 0
    ingested: int = 0
    chunks: int = 0
    unchanged: int = 0
    failures: list[FileFailure] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """How to reach the service and how to batch."""

    url: str
    api_key: str
    tenant: str
    journal: Path
    batch_files: int = 16
    batch_bytes: int = 8 * 1024 * 1024
    metadata: dict[str, Any] | None = None
    groups: tuple[str, ...] = ()
    resume: bool = True
    timeout_seconds: float = 120.0


def collect_files(paths: Sequence[Path]) -> tuple[list[SourceFile], list[FileFailure]]:
    """The files named by `paths`, and the paths that cannot be ingested.

    A file is taken as given (its document id from its name); a directory is walked
    recursively for supported extensions, skipping hidden entries, and each file's id comes
    from its path relative to that directory (`guides/setup.md` -> `guides:setup.md`).
    Two files that would get the same document id are refused after the first.
    """
    found: list[SourceFile] = []
    failures: list[FileFailure] = []
    for root in paths:
        if root.is_dir():
            for path in _walk(root):
                name = path.relative_to(root).as_posix()
                found.append(SourceFile(path, document_id_from_filename(name), name))
        elif root.is_file():
            if root.suffix.lower() not in FORMAT_BY_EXTENSION:
                supported = ", ".join(sorted(FORMAT_BY_EXTENSION))
                failures.append(
                    FileFailure(root, f"unsupported file type (supported: {supported})")
                )
                continue
            found.append(SourceFile(root, document_id_from_filename(root.name), root.name))
        else:
            failures.append(FileFailure(root, "no such file or directory"))
    unique: list[SourceFile] = []
    owner: dict[str, Path] = {}
    for source in found:
        if not source.document_id:
            failures.append(FileFailure(source.path, "no document id can be derived from its name"))
        elif source.document_id in owner:
            failures.append(
                FileFailure(
                    source.path,
                    f"document id {source.document_id!r} is already {owner[source.document_id]}'s",
                )
            )
        else:
            owner[source.document_id] = source.path
            unique.append(source)
    return unique, failures


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in FORMAT_BY_EXTENSION:
            yield path


class Journal:
    """Files the service has confirmed, per (service URL, tenant), as appended JSON lines."""

    def __init__(self, path: Path, *, url: str, tenant: str) -> None:
        self._path = path
        self._url = url
        self._tenant = tenant
        self._done: dict[str, str] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that file is simply sent again
                if entry.get("url") == url and entry.get("tenant") == tenant:
                    self._done[entry["id"]] = entry["sha256"]

    def is_done(self, document_id: str, sha256: str) -> bool:
        """Whether this exact content was already confirmed under this id."""
        return self._done.get(document_id) == sha256

    def record(self, entries: list[tuple[SourceFile, str]]) -> None:
        """Append confirmed files and force them to disk before the run moves on."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a", encoding="utf-8") as journal:
            for source, sha256 in entries:
                line = {
                    "url": self._url,
                    "tenant": self._tenant,
                    "id": source.document_id,
                    "sha256": sha256,
                    "path": str(source.path),
                }
                journal.write(json.dumps(line) + "\n")
                self._done[source.document_id] = sha256
            journal.flush()
            os.fsync(journal.fileno())


@dataclass(frozen=True, slots=True)
class _Loaded:
    source: SourceFile
    data: bytes
    sha256: str


ProgressHook = Callable[[int], None]
FailureHook = Callable[[FileFailure], None]


class BulkIngester:
    """Sends files to the service in batches, journalling what it confirms."""

    def __init__(
        self,
        options: IngestOptions,
        *,
        report: IngestReport,
        advance: ProgressHook,
        on_failure: FailureHook,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._options = options
        self._report = report
        self._advance = advance
        self._on_failure = on_failure
        self._transport = transport
        self._journal = Journal(options.journal, url=options.url, tenant=options.tenant)

    async def run(self, files: list[SourceFile]) -> None:
        """Ingest `files`, batch by batch; per-file failures are reported, not raised.

        Raises:
            FatalIngestError: The credential is refused or the service cannot be reached.
        """
        async with httpx.AsyncClient(
            base_url=self._options.url,
            headers={"Authorization": f"Bearer {self._options.api_key}"},
            timeout=self._options.timeout_seconds,
            transport=self._transport,
        ) as http:
            batch: list[_Loaded] = []
            size = 0
            for source in files:
                loaded = self._load(source)
                if loaded is None:
                    continue
                if batch and (
                    len(batch) >= self._options.batch_files
                    or size + len(loaded.data) > self._options.batch_bytes
                ):
                    await self._send(http, batch)
                    batch, size = [], 0
                batch.append(loaded)
                size += len(loaded.data)
            if batch:
                await self._send(http, batch)

    def _load(self, source: SourceFile) -> _Loaded | None:
        try:
            data = source.path.read_bytes()
        except OSError as exc:
            self._fail(source, f"cannot read: {exc.strerror or exc}")
            return None
        sha256 = hashlib.sha256(data).hexdigest()
        if self._options.resume and self._journal.is_done(source.document_id, sha256):
            self._report.unchanged += 1
            self._advance(1)
            return None
        return _Loaded(source, data, sha256)

    def _fail(self, source: SourceFile, reason: str) -> None:
        failure = FileFailure(source.path, reason)
        self._report.failures.append(failure)
        self._on_failure(failure)
        self._advance(1)

    async def _send(self, http: httpx.AsyncClient, batch: list[_Loaded]) -> None:
        response = await self._post(http, batch)
        if response.status_code == 201:
            chunks = {d["id"]: d["chunks"] for d in response.json()["documents"]}
            self._journal.record([(item.source, item.sha256) for item in batch])
            self._report.ingested += len(batch)
            self._report.chunks += sum(chunks.values())
            self._advance(len(batch))
            return
        if len(batch) > 1 and response.status_code < 500:
            # The service takes a batch all or nothing: find the culprit(s) one file at a time.
            for item in batch:
                await self._send(http, [item])
            return
        reason = _problem(response)
        for item in batch:
            self._fail(item.source, reason)

    async def _post(self, http: httpx.AsyncClient, batch: list[_Loaded]) -> httpx.Response:
        options = self._options
        fields: dict[str, Any] = {
            "tenant_id": options.tenant,
            "id": [item.source.document_id for item in batch],
        }
        if options.metadata:
            fields["metadata"] = json.dumps(options.metadata)
        if options.groups:
            fields["acl"] = json.dumps({"groups": list(options.groups)})
        files = [
            (
                "file",
                (
                    item.source.upload_name,
                    item.data,
                    _CONTENT_TYPES.get(item.source.path.suffix.lower(), "text/plain"),
                ),
            )
            for item in batch
        ]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = await http.post("/v1/documents", data=fields, files=files)
            except httpx.TransportError as exc:
                if attempt == MAX_ATTEMPTS:
                    raise FatalIngestError(
                        f"cannot reach the service at {options.url}: {exc!r}"
                    ) from exc
                await asyncio.sleep(min(2**attempt * 0.25, MAX_RETRY_WAIT_SECONDS))
                continue
            if response.status_code in _FATAL_STATUSES:
                raise FatalIngestError(f"the service refused the request: {_problem(response)}")
            if response.status_code not in _RETRY_STATUSES or attempt == MAX_ATTEMPTS:
                return response
            await asyncio.sleep(_retry_after(response, attempt))
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(response: httpx.Response, attempt: int) -> float:
    header = response.headers.get("retry-after", "")
    wait = float(header) if header.isdigit() else 2**attempt * 0.25
    return min(wait, MAX_RETRY_WAIT_SECONDS)


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and "code" in body:
        return f"{response.status_code} {body['code']}: {body.get('detail', '')}"
    return f"HTTP {response.status_code}"
