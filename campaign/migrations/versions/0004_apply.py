"""[apply] kind = "http": apply batches (one Idempotency-Key each, the change rows they carry)

Revision ID: 0004_apply
Revises: 0003
Create Date: 2026-11-30 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import campaign.db

revision: str = '0004_apply'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('apply_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('operation', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('changes', sa.Integer(), nullable=False),
    sa.Column('change_ids', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('done_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_apply_batch_campaign_id_campaign')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_apply_batch')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_apply_batch_idempotency_key'))
    )
    with op.batch_alter_table('apply_batch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_apply_batch_campaign_id'), ['campaign_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('apply_batch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_apply_batch_campaign_id'))
    op.drop_table('apply_batch')
