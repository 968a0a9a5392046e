"""The bundled sample corpus: `tenants/corpus/<tenant>/*.md`, ingested by `bulkhead dev`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from app.config import Settings
from app.retrieval.schemas import DocumentIn
from app.retrieval.service import DocumentService
from app.tenancy.scope import Role, TenantScope

_log = logging.getLogger(__name__)

SEED_SUBJECT = "bulkhead:dev-seed"


def corpus_documents(directory: Path) -> list[DocumentIn]:
    """One document per Markdown file, titled by its first heading, id'd by its file name."""
    documents = []
    for path in sorted(directory.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        first = text.lstrip().splitlines()[0] if text.strip() else path.stem
        title = first.lstrip("# ").strip() or path.stem
        documents.append(
            DocumentIn(
                title=title, text=text, id=path.stem, metadata={"source": f"corpus/{path.name}"}
            )
        )
    return documents


async def seed_demo_corpus(
    service: DocumentService, tenant_ids: Iterable[str], settings: Settings
) -> None:
    """Ingest each onboarded tenant's sample corpus once (skipped when it has documents)."""
    corpus_root = settings.tenants_dir / "corpus"
    for tenant_id in tenant_ids:
        directory = corpus_root / tenant_id
        if not directory.is_dir():
            continue
        scope = TenantScope.system(
            tenant_id, actor=SEED_SUBJECT, roles={Role.INGEST}, credential_id="dev-seed"
        )
        existing, _ = await service.list_page(scope=scope, cursor=None, limit=1)
        if existing:
            continue
        prepared = service.prepare(corpus_documents(directory))
        written = await service.ingest(scope=scope, documents=prepared)
        _log.info(
            "ingested %d sample documents (%d chunks) for tenant %s",
            len(written),
            sum(n for _, n in written),
            tenant_id,
        )
