"""count snapshot: the figures of a campaign's status as last counted, for the console's pages

Revision ID: 0012_count_snapshot
Revises: 0011_message_proof
Create Date: 2026-12-07 21:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import campaign.db

revision: str = '0012_count_snapshot'
down_revision: str | None = '0011_message_proof'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'count_snapshot',
        sa.Column('campaign_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('taken_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id']),
        sa.PrimaryKeyConstraint('campaign_id'),
    )


def downgrade() -> None:
    op.drop_table('count_snapshot')
