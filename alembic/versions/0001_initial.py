"""initial schema: entries, outputs, reservations

Revision ID: 0001_initial
Revises: 
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001_initial'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('entries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('resource_type', sa.Integer(), nullable=True),
    sa.Column('project', sa.String(length=255), server_default='', nullable=False),
    sa.Column('domain', sa.String(length=255), server_default='', nullable=False),
    sa.Column('name', sa.Text(), server_default='', nullable=False),
    sa.Column('version', sa.Text(), server_default='', nullable=False),
    sa.Column('org', sa.String(length=255), server_default='', nullable=False),
    sa.Column('key_map', sa.Text(), server_default='{}', nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('last_updated_at', sa.BigInteger(), nullable=False),
    sa.Column('output_uri', sa.Text(), nullable=True),
    sa.Column('size', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('metadata_pb', sa.LargeBinary(), nullable=True),
    sa.Column('writes', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_entries')),
    sa.UniqueConstraint('key', name=op.f('uq_entries_key'))
    )
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_entries_last_updated_at'), ['last_updated_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_entries_project_domain_name'), ['project', 'domain', 'name'], unique=False)

    op.create_table('reservations',
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('owner_id', sa.Text(), nullable=False),
    sa.Column('heartbeat_interval', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('previous_owner', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_reservations'))
    )
    with op.batch_alter_table('reservations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reservations_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_reservations_owner_id'), ['owner_id'], unique=False)

    op.create_table('outputs',
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('literal', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['entry_id'], ['entries.id'], name=op.f('fk_outputs_entry_id_entries'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('entry_id', 'name', name=op.f('pk_outputs'))
    )


def downgrade() -> None:
    op.drop_table('outputs')
    with op.batch_alter_table('reservations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reservations_owner_id'))
        batch_op.drop_index(batch_op.f('ix_reservations_expires_at'))

    op.drop_table('reservations')
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_entries_project_domain_name'))
        batch_op.drop_index(batch_op.f('ix_entries_last_updated_at'))

    op.drop_table('entries')
