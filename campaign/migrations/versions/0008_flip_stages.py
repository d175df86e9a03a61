"""the staged flip: each stage that has begun (flip_stage), and the stage of each change row

Revision ID: 0008_flip_stages
Revises: 0007_version_files
Create Date: 2026-12-09 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import campaign.db

revision: str = '0008_flip_stages'
down_revision: str | None = '0007_version_files'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'flip_stage',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('percent', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column('started_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('finished_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('requests', sa.Integer(), nullable=False),
        sa.Column('errors', sa.Integer(), nullable=False),
        sa.Column('halted_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('halted_from', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=True),
        sa.Column('guard', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('measured', sa.Float(), nullable=True),
        sa.Column('threshold', sa.Float(), nullable=True),
        sa.Column('resumed_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('resumed_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_flip_stage_campaign_id_campaign')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_flip_stage')),
        sa.UniqueConstraint('campaign_id', 'number', name=op.f('uq_flip_stage_campaign_id_number')),
    )
    with op.batch_alter_table('setting_change', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stage', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('setting_change', schema=None) as batch_op:
        batch_op.drop_column('stage')
    op.drop_table('flip_stage')
