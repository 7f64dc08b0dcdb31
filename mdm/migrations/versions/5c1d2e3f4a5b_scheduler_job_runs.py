"""scheduler job runs: each scheduled job's last run, for catching up once after downtime

Revision ID: 5c1d2e3f4a5b
Revises: aa50c2e4f6eb
Create Date: 2026-11-28 20:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '5c1d2e3f4a5b'
down_revision = 'aa50c2e4f6eb'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('scheduler_job_runs',
    sa.Column('job_id', sa.String(length=255), nullable=False),
    sa.Column('last_run_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_scheduler_job_runs'))
    )


def downgrade():
    op.drop_table('scheduler_job_runs')
