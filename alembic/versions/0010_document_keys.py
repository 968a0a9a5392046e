"""Documents are found by id among keys: `documents_name_idx`.

Several documents may now share an id, each visible to different groups (ACLs guard writes;
see `app/retrieval/acl.py`). A row's `id` is the document's key: the id callers use, then `~`
and a random suffix; rows written before keep their id as their key. Ingestion, deletion and
listing look documents up by the id part, `split_part(id, '~', 1)`, which this index covers
(with the key after it, the listing's order). No row changes: ids never contained `~`.

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX documents_name_idx ON documents (tenant_id, (split_part(id, '~', 1)), id)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX documents_name_idx")
