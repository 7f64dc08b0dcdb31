"""device identity: retired certificates, and the declarations a device was last served

Revision ID: 8a1d0e1c0001
Revises: 8b2e0f2d0002
Create Date: 2026-12-06 16:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '8a1d0e1c0001'
down_revision = '8b2e0f2d0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('device_certificates') as batch_op:
        batch_op.add_column(sa.Column('retired_at', sa.DateTime(), nullable=True))
    with op.batch_alter_table('ddm_declaration_sets') as batch_op:
        batch_op.add_column(sa.Column('served_identifiers', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('ddm_declaration_sets') as batch_op:
        batch_op.drop_column('served_identifiers')
    with op.batch_alter_table('device_certificates') as batch_op:
        batch_op.drop_column('retired_at')
