"""subnet_calibrations: BN statistics (and measured accuracy) per (sub-network, supernet version, calibration set)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'subnet_calibrations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('subnet_id', sa.String(length=32), nullable=False),
        sa.Column('supernet_version', sa.String(length=64), nullable=False),
        sa.Column('calib_key', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('stats', sa.LargeBinary(), nullable=True),
        sa.Column('n_images', sa.Integer(), nullable=True),
        sa.Column('seconds', sa.Float(), nullable=True),
        sa.Column('eval_key', sa.String(length=64), nullable=True),
        sa.Column('measured_accuracy', sa.Float(), nullable=True),
        sa.Column('eval_images', sa.Integer(), nullable=True),
        sa.Column('eval_seconds', sa.Float(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['subnet_id'], ['subnets.id'], name=op.f('fk_subnet_calibrations_subnet_id_subnets'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_subnet_calibrations')),
        sa.UniqueConstraint('subnet_id', 'supernet_version', 'calib_key', name='uq_subnet_calibrations_key'),
    )
    with op.batch_alter_table('subnet_calibrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subnet_calibrations_subnet_id'), ['subnet_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('subnet_calibrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subnet_calibrations_subnet_id'))
    op.drop_table('subnet_calibrations')
