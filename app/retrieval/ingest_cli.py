"""`bulkhead ingest`: send files and directory trees to a running service, resumably."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from app.config import get_settings
from app.retrieval.bulk import (
    BulkIngester,
    FatalIngestError,
    FileFailure,
    IngestOptions,
    IngestReport,
    collect_files,
)

API_KEY_ENV = "BULKHEAD_API_KEY"
URL_ENV = "BULKHEAD_URL"
EXIT_FAILED_FILES = 1
EXIT_FATAL = 2
EXIT_INTERRUPTED = 130


def _metadata(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise click.BadParameter("must be a JSON object")
    return decoded


@click.command("ingest")
@click.option(
    "--tenant", required=True, help="Tenant the API key belongs to (checked by the service)."
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--url",
    default=None,
    help=f"Service base URL (default ${URL_ENV}, else the configured host:port).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    default=16,
    show_default=True,
    help="Files per request.",
)
@click.option(
    "--batch-bytes",
    type=click.IntRange(1024),
    default=8 * 1024 * 1024,
    show_default=True,
    help="Bytes per request (a larger file goes alone).",
)
@click.option(
    "--metadata",
    default=None,
    help='JSON object given to every document, e.g. \'{"source": "wiki"}\'.',
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="ACL group allowed to read the documents (repeatable). The credential must be in one"
    " of them: API keys carry no groups, so this needs a JWT with the group.",
)
@click.option(
    "--journal",
    type=click.Path(path_type=Path),
    default=None,
    help="Resume journal (default <data_dir>/ingest-<tenant>.jsonl).",
)
@click.option(
    "--no-resume",
    is_flag=True,
    help="Send every file, even those the journal says are ingested unchanged.",
)
def ingest(
    tenant: str,
    paths: tuple[Path, ...],
    url: str | None,
    batch_size: int,
    batch_bytes: int,
    metadata: str | None,
    groups: tuple[str, ...],
    journal: Path | None,
    no_resume: bool,
) -> None:
    """Ingest files (txt, md, html, pdf) and directories (recursively) through the service.

    The API key (or a JWT) comes from $BULKHEAD_API_KEY, never from the command line. Rerunning
    the same command after an interruption skips the files already ingested unchanged.
    """
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key:
        raise click.UsageError(f"set {API_KEY_ENV} to an API key with the ingest scope")
    settings = get_settings()
    options = IngestOptions(
        url=(url or os.environ.get(URL_ENV) or f"http://{settings.host}:{settings.port}").rstrip(
            "/"
        ),
        api_key=api_key,
        tenant=tenant,
        journal=journal or settings.data_dir / f"ingest-{tenant}.jsonl",
        batch_files=batch_size,
        batch_bytes=batch_bytes,
        metadata=_metadata(metadata),
        groups=groups,
        resume=not no_resume,
    )
    sys.exit(run_ingest(options, list(paths), console=Console(stderr=True)))


def run_ingest(options: IngestOptions, paths: list[Path], *, console: Console) -> int:
    """Run a bulk ingestion with a progress bar and a summary; returns the exit status."""
    files, failures = collect_files(paths)
    report = IngestReport(total=len(files) + len(failures))
    for failure in failures:
        report.failures.append(failure)
        _print_failure(console, failure)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task("files", total=len(files))
    ingester = BulkIngester(
        options,
        report=report,
        advance=lambda n: progress.advance(task, n),
        on_failure=lambda failure: _print_failure(console, failure),
    )
    status = 0
    try:
        with progress:
            asyncio.run(ingester.run(files))
    except FatalIngestError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        status = EXIT_FATAL
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] rerun the same command to resume")
        status = EXIT_INTERRUPTED
    _print_summary(console, report)
    if status:
        return status
    return EXIT_FAILED_FILES if report.failures else 0


def _print_failure(console: Console, failure: FileFailure) -> None:
    console.print(
        f"[red]failed[/red] {escape(str(failure.path))}: {escape(failure.reason)}",
        highlight=False,
        soft_wrap=True,
    )


def _print_summary(console: Console, report: IngestReport) -> None:
    console.print(
        f"{report.ingested} ingested ({report.chunks} chunks), {report.unchanged} unchanged"
        f" (skipped), {len(report.failures)} failed, of {report.total} files",
        highlight=False,
        soft_wrap=True,
    )
    for failure in report.failures:
        console.print(
            f"  {escape(str(failure.path))}: {escape(failure.reason)}",
            highlight=False,
            soft_wrap=True,
        )
