"""devices.time_zone: the IANA zone a device reports (DeviceInformation TimeZone), for deadlines

Revision ID: 8e5a2b4f0004
Revises: 5c1d2e3f4a5b
Create Date: 2026-12-06 16:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '8e5a2b4f0004'
down_revision = '5c1d2e3f4a5b'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('devices') as batch_op:
        batch_op.add_column(sa.Column('time_zone', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('devices') as batch_op:
        batch_op.drop_column('time_zone')
