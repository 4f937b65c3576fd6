"""latency_tables.batch_size (a table version states the batch it was timed at) and device_timings (the
whole-network timings posted for calibration, kept so later posts refit on all of them)

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('latency_tables', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_size', sa.Integer(), server_default='1', nullable=False))
    op.create_table(
        'device_timings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('device_id', sa.Integer(), nullable=False),
        sa.Column('batch_size', sa.Integer(), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('latency_ms', sa.Float(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_device_timings_device_id_devices'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_device_timings')),
    )
    with op.batch_alter_table('device_timings', schema=None) as batch_op:
        batch_op.create_index('ix_device_timings_device_batch', ['device_id', 'batch_size'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('device_timings', schema=None) as batch_op:
        batch_op.drop_index('ix_device_timings_device_batch')
    op.drop_table('device_timings')
    with op.batch_alter_table('latency_tables', schema=None) as batch_op:
        batch_op.drop_column('batch_size')
