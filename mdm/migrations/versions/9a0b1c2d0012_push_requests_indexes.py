"""Push requests: indexes on (device_id, status) and (status, next_attempt_at) instead of one column each

SQLite answered both "this device's pending push request" and the sender's "next due pending rows, in
order" from the index on status alone, scanning or sorting every pending row each time: a fleet-wide
declaration change (100,000 push requests) became quadratic. The new indexes answer each lookup directly
and serve the single-column lookups the old ones served.

Revision ID: 9a0b1c2d0012
Revises: 9a0b1c2d0011
Create Date: 2026-12-06 23:00:00

"""
from alembic import op


revision = '9a0b1c2d0012'
down_revision = '9a0b1c2d0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('push_requests', schema=None) as batch_op:
        batch_op.create_index('ix_push_requests_device_status', ['device_id', 'status'], unique=False)
        batch_op.create_index('ix_push_requests_status_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.drop_index(batch_op.f('ix_push_requests_device_id'))
        batch_op.drop_index(batch_op.f('ix_push_requests_status'))


def downgrade():
    with op.batch_alter_table('push_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_push_requests_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_push_requests_status'), ['status'], unique=False)
        batch_op.drop_index('ix_push_requests_device_status')
        batch_op.drop_index('ix_push_requests_status_due')
