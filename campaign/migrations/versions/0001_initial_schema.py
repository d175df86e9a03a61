"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 12:08:53.397294
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import campaign.db


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('account',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('locale', sqlmodel.sql.sqltypes.AutoString(length=35), nullable=False),
    sa.Column('timezone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('country', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('created_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account')),
    sqlite_with_rowid=False
    )
    op.create_table('campaign',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('definition', sa.Text(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('template', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('setting', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('from_value', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('to_value', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('cutoff', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('state_reason', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('created_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('scheduled_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('rolled_back_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign')),
    sa.UniqueConstraint('slug', name=op.f('uq_campaign_slug'))
    )
    op.create_table('lease',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('expires_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_lease'))
    )
    op.create_table('audit_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_audit_event_campaign_id_campaign')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event'))
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_event_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_event_campaign_id'), ['campaign_id'], unique=False)

    op.create_table('device',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('created_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_device_account_id_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device')),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_account_id'), ['account_id'], unique=False)

    op.create_table('step',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('due_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('started_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_step_campaign_id_campaign')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_step')),
    sa.UniqueConstraint('campaign_id', 'name', name=op.f('uq_step_campaign_id_name'))
    )
    op.create_table('suppression',
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('created_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_suppression_campaign_id_campaign')),
    sa.PrimaryKeyConstraint('email', name=op.f('pk_suppression'))
    )
    # Autogenerate does not see expression indexes: written by hand.
    op.create_index('ix_suppression_email_lower', 'suppression', [sa.text('lower(email)')], unique=True)
    op.create_table('wave',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('audience', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('expires', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('paused_reason', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('materialized_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_wave_campaign_id_campaign')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wave')),
    sa.UniqueConstraint('campaign_id', 'name', name=op.f('uq_wave_campaign_id_name'))
    )
    with op.batch_alter_table('wave', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wave_campaign_id'), ['campaign_id'], unique=False)

    op.create_table('delivery',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('wave_id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('locale', sqlmodel.sql.sqltypes.AutoString(length=35), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('not_before', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('lease_expires_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('sent_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.Column('updated_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_delivery_account_id_account')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_delivery_campaign_id_campaign')),
    sa.ForeignKeyConstraint(['wave_id'], ['wave.id'], name=op.f('fk_delivery_wave_id_wave')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery')),
    sa.UniqueConstraint('campaign_id', 'wave_id', 'account_id', name=op.f('uq_delivery_campaign_id_wave_id_account_id'))
    )
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_account', ['account_id'], unique=False)
        batch_op.create_index('ix_delivery_claim', ['wave_id', 'state', 'next_attempt_at'], unique=False)

    op.create_table('setting_change',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('setting', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('from_value', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('to_value', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('decided_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('flipped_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('rolled_back_at', campaign.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_setting_change_account_id_account')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_setting_change_campaign_id_campaign')),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], name=op.f('fk_setting_change_device_id_device')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_setting_change')),
    sa.UniqueConstraint('campaign_id', 'device_id', name=op.f('uq_setting_change_campaign_id_device_id'))
    )
    with op.batch_alter_table('setting_change', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_setting_change_account_id'), ['account_id'], unique=False)

    op.create_table('worker',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('host', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('wave_id', sa.Integer(), nullable=True),
    sa.Column('started_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_worker_campaign_id_campaign')),
    sa.ForeignKeyConstraint(['wave_id'], ['wave.id'], name=op.f('fk_worker_wave_id_wave')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_worker'))
    )
    op.create_table('device_setting',
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('changed_at', campaign.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('change_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['change_id'], ['setting_change.id'], name=op.f('fk_device_setting_change_id_setting_change')),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], name=op.f('fk_device_setting_device_id_device')),
    sa.PrimaryKeyConstraint('device_id', 'key', name=op.f('pk_device_setting')),
    sqlite_with_rowid=False
    )


def downgrade() -> None:
    op.drop_table('device_setting')
    op.drop_table('worker')
    with op.batch_alter_table('setting_change', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_setting_change_account_id'))

    op.drop_table('setting_change')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_claim')
        batch_op.drop_index('ix_delivery_account')

    op.drop_table('delivery')
    with op.batch_alter_table('wave', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wave_campaign_id'))

    op.drop_table('wave')
    op.drop_index('ix_suppression_email_lower', table_name='suppression')
    op.drop_table('suppression')
    op.drop_table('step')
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_account_id'))

    op.drop_table('device')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_event_campaign_id'))
        batch_op.drop_index(batch_op.f('ix_audit_event_at'))

    op.drop_table('audit_event')
    op.drop_table('lease')
    op.drop_table('campaign')
    op.drop_table('account')
