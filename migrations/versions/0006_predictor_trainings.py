"""predictor_trainings: accuracy predictors trained by a worker from posted (config, accuracy) pairs

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'predictor_trainings',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('supernet', sa.String(length=128), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('owner_key_id', sa.Integer(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['owner_key_id'], ['api_keys.id'],
                                name=op.f('fk_predictor_trainings_owner_key_id_api_keys'), ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_predictor_trainings')),
    )
    with op.batch_alter_table('predictor_trainings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_predictor_trainings_supernet'), ['supernet'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('predictor_trainings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_predictor_trainings_supernet'))
    op.drop_table('predictor_trainings')
