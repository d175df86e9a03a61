"""returned mail: bounces, delays and complaints taken in later

Revision ID: 0005_bounces
Revises: 0004_apply
Create Date: 2026-11-29 22:05:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import campaign.db

revision: str = '0005_bounces'
down_revision: str | None = '0004_apply'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('bounce',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('matched_by', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('delivery_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('origin', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('reported_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('imported_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('imported_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_bounce_campaign_id_campaign')),
    sa.ForeignKeyConstraint(['delivery_id'], ['delivery.id'], name=op.f('fk_bounce_delivery_id_delivery')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bounce')),
    sa.UniqueConstraint('key', name=op.f('uq_bounce_key'))
    )
    with op.batch_alter_table('bounce', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bounce_delivery_id'), ['delivery_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('bounce', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bounce_delivery_id'))

    op.drop_table('bounce')
