"""provider events: what the mail provider saw (delivered, bounced, complained), replay memory, delivered_at

Revision ID: 0010_provider_events
Revises: 0009_webhooks
Create Date: 2026-12-10 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import campaign.db

revision: str = '0010_provider_events'
down_revision: str | None = '0009_webhooks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('provider_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('delivery_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('provider_message_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('occurred_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('received_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_provider_event_campaign_id_campaign')),
    sa.ForeignKeyConstraint(['delivery_id'], ['delivery.id'], name=op.f('fk_provider_event_delivery_id_delivery')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provider_event')),
    sa.UniqueConstraint('provider', 'key', name=op.f('uq_provider_event_provider_key'))
    )
    with op.batch_alter_table('provider_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_event_delivery_id'), ['delivery_id'], unique=False)
        batch_op.create_index('ix_provider_event_message', ['provider', 'provider_message_id'], unique=False)
    op.create_table('provider_nonce',
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('seen_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'nonce', name=op.f('pk_provider_nonce'))
    )
    with op.batch_alter_table('provider_nonce', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_nonce_seen_at'), ['seen_at'], unique=False)
    # Nullable columns only: SQLite adds them in place (no copy of the ledger).
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivered_at', campaign.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('accepted_by', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_column('accepted_by')
        batch_op.drop_column('delivered_at')
    with op.batch_alter_table('provider_nonce', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_nonce_seen_at'))
    op.drop_table('provider_nonce')
    with op.batch_alter_table('provider_event', schema=None) as batch_op:
        batch_op.drop_index('ix_provider_event_message')
        batch_op.drop_index(batch_op.f('ix_provider_event_delivery_id'))
    op.drop_table('provider_event')
