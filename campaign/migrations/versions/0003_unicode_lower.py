"""rebuild SQLite's lower(email) index now that lower() folds every letter, not only ASCII

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 19:55:00
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # campaign.db registers a Unicode lower() on every SQLite connection; an index built with SQLite's
    # ASCII-only one would disagree with it for a non-ASCII capital. PostgreSQL's lower() was Unicode already.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("REINDEX ix_suppression_email_lower")


def downgrade() -> None:
    pass
