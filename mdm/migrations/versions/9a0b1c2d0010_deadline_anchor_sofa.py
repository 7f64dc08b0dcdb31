"""anchored deadlines, the exploited-vulnerability grace, and the SOFA feed cache

Existing policies get deadline_anchor "newest": they keep restarting the clock with each release, as
they did before this revision (anchoring them would pull deadlines into the past on upgrade and force
installs fleet-wide at once). New policies default to "first_missed" (mdm.ddm.policies.PolicySettings).

Revision ID: 9a0b1c2d0010
Revises: 8a1d0e1c0001
Create Date: 2026-12-06 19:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '9a0b1c2d0010'
down_revision = '8a1d0e1c0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('ddm_patch_policies') as batch_op:
        batch_op.add_column(sa.Column('deadline_anchor', sa.String(length=16), nullable=False,
                                      server_default='newest'))
        batch_op.add_column(sa.Column('exploited_grace_days', sa.Integer(), nullable=True))
    with op.batch_alter_table('ddm_device_patch_targets') as batch_op:
        batch_op.add_column(sa.Column('deadline_anchor_version', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('deadline_note', sa.String(length=512), nullable=True))
    with op.batch_alter_table('ddm_policy_results') as batch_op:
        batch_op.add_column(sa.Column('deadline_note', sa.String(length=512), nullable=True))
    op.create_table('ddm_sofa_feed',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('source', sa.String(length=1024), nullable=True),
                    sa.Column('feed_checked_at', sa.DateTime(), nullable=True),
                    sa.Column('releases', sa.JSON(), nullable=True),
                    sa.Column('last_attempt_at', sa.DateTime(), nullable=True),
                    sa.Column('last_success_at', sa.DateTime(), nullable=True),
                    sa.Column('last_error', sa.Text(), nullable=True),
                    sa.Column('generation', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('id'))


def downgrade():
    op.drop_table('ddm_sofa_feed')
    with op.batch_alter_table('ddm_policy_results') as batch_op:
        batch_op.drop_column('deadline_note')
    with op.batch_alter_table('ddm_device_patch_targets') as batch_op:
        batch_op.drop_column('deadline_note')
        batch_op.drop_column('deadline_anchor_version')
    with op.batch_alter_table('ddm_patch_policies') as batch_op:
        batch_op.drop_column('exploited_grace_days')
        batch_op.drop_column('deadline_anchor')
