"""the flip's evidence: who flipped each device, the notice it relied on, fair-notice due time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 19:20:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import campaign.db

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('setting_change', schema=None) as batch_op:
        batch_op.add_column(sa.Column('actor', sa.String(length=128), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('notice_at', campaign.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('due_at', campaign.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('setting_change', schema=None) as batch_op:
        batch_op.drop_column('due_at')
        batch_op.drop_column('notice_at')
        batch_op.drop_column('actor')
