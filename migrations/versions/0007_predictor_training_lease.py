"""predictor_trainings.heartbeat_at: a training's deadline while running, its last publish while queued

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictor_trainings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('predictor_trainings', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
