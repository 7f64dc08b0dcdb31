"""Software Update Enforcement policies (one specific version by a set date), their bindings and results

Revision ID: 9a0b1c2d0011
Revises: 9a0b1c2d0010
Create Date: 2026-12-06 19:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '9a0b1c2d0011'
down_revision = '9a0b1c2d0010'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('ddm_enforcement_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('platform', sa.String(length=16), nullable=False),
    sa.Column('target_version', sa.String(length=32), nullable=False),
    sa.Column('target_build', sa.String(length=32), nullable=True),
    sa.Column('enforce_at', sa.String(length=16), nullable=False),
    sa.Column('details_url', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ddm_enforcement_policies')),
    sa.UniqueConstraint('name', name=op.f('uq_ddm_enforcement_policies_name'))
    )
    op.create_table('ddm_enforcement_bindings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('(device_id IS NULL) <> (group_id IS NULL)', name=op.f('ck_ddm_enforcement_bindings_one_target')),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_ddm_enforcement_bindings_device_id_devices'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['group_id'], ['device_groups.id'], name=op.f('fk_ddm_enforcement_bindings_group_id_device_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_id'], ['ddm_enforcement_policies.id'], name=op.f('fk_ddm_enforcement_bindings_policy_id_ddm_enforcement_policies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ddm_enforcement_bindings')),
    sa.UniqueConstraint('policy_id', 'device_id', name='uq_ddm_enforcement_bindings_policy_device'),
    sa.UniqueConstraint('policy_id', 'group_id', name='uq_ddm_enforcement_bindings_policy_group')
    )
    with op.batch_alter_table('ddm_enforcement_bindings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ddm_enforcement_bindings_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ddm_enforcement_bindings_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ddm_enforcement_bindings_policy_id'), ['policy_id'], unique=False)

    op.create_table('ddm_enforcement_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('effective', sa.String(length=300), nullable=True),
    sa.Column('state_since', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_ddm_enforcement_results_device_id_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ddm_enforcement_results')),
    sa.UniqueConstraint('policy_id', 'device_id', name='uq_ddm_enforcement_results_policy_device')
    )
    with op.batch_alter_table('ddm_enforcement_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ddm_enforcement_results_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ddm_enforcement_results_policy_id'), ['policy_id'], unique=False)


def downgrade():
    with op.batch_alter_table('ddm_enforcement_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ddm_enforcement_results_policy_id'))
        batch_op.drop_index(batch_op.f('ix_ddm_enforcement_results_device_id'))
    op.drop_table('ddm_enforcement_results')
    with op.batch_alter_table('ddm_enforcement_bindings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ddm_enforcement_bindings_policy_id'))
        batch_op.drop_index(batch_op.f('ix_ddm_enforcement_bindings_group_id'))
        batch_op.drop_index(batch_op.f('ix_ddm_enforcement_bindings_device_id'))
    op.drop_table('ddm_enforcement_bindings')
    op.drop_table('ddm_enforcement_policies')
