"""Conversation content encrypted at rest: `messages.sealed` (AES-256-GCM, tenant data key).

New messages keep their text, citations and retrieved context only in `sealed`; `content` and
`citations` stay for rows written before this revision (read as they are) and are NULL for
sealed rows. The check constraint keeps the two kinds apart.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
# Rebase onto the latest revision when this lands on main.
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE messages ADD COLUMN sealed bytea")
    op.execute("ALTER TABLE messages ALTER COLUMN content DROP NOT NULL")
    op.execute("ALTER TABLE messages ALTER COLUMN citations DROP NOT NULL")
    op.execute("ALTER TABLE messages ALTER COLUMN citations DROP DEFAULT")
    op.execute(
        "ALTER TABLE messages ADD CONSTRAINT messages_sealed_xor_plain"
        " CHECK ((sealed IS NULL) <> (content IS NULL))"
    )


def downgrade() -> None:
    # Sealed rows cannot be turned back into plaintext without the keys: they are dropped.
    op.execute("DELETE FROM messages WHERE sealed IS NOT NULL")
    op.execute("ALTER TABLE messages DROP CONSTRAINT messages_sealed_xor_plain")
    op.execute("UPDATE messages SET citations = '[]' WHERE citations IS NULL")
    op.execute("ALTER TABLE messages ALTER COLUMN citations SET DEFAULT '[]'")
    op.execute("ALTER TABLE messages ALTER COLUMN citations SET NOT NULL")
    op.execute("ALTER TABLE messages ALTER COLUMN content SET NOT NULL")
    op.execute("ALTER TABLE messages DROP COLUMN sealed")
