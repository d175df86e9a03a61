"""message proof: each delivery's message digest, the version that built it, and the inputs that rebuild it

Revision ID: 0011_message_proof
Revises: 0010_provider_events
Create Date: 2026-12-08 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0011_message_proof'
down_revision: str | None = '0010_provider_events'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: deliveries sent before this migration have no proof, and say so.
    with op.batch_alter_table('delivery') as batch:
        batch.add_column(sa.Column('message_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch.add_column(sa.Column('version', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('version_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch.add_column(sa.Column('message_inputs', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('delivery') as batch:
        batch.drop_column('message_inputs')
        batch.drop_column('version_sha256')
        batch.drop_column('version')
        batch.drop_column('message_sha256')
