"""admin sessions on the server; API tokens owned by the account that made them

Sessions end on the server (logout, password or role change, disable): one row per signed-in
browser replaces the per-account session generation. A token made in the UI belongs to its maker
(refused while that account is disabled); existing tokens are matched to their maker by name.

Revision ID: 8b2e0f2d0002
Revises: 8e5a2b4f0004
Create Date: 2026-12-06 16:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '8b2e0f2d0002'
down_revision = '8e5a2b4f0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('admin_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('admin_user_id', sa.Integer(), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['admin_user_id'], ['admin_users.id'],
                            name=op.f('fk_admin_sessions_admin_user_id_admin_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_sessions')),
    sa.UniqueConstraint('secret_sha256', name=op.f('uq_admin_sessions_secret_sha256'))
    )
    op.create_index(op.f('ix_admin_sessions_admin_user_id'), 'admin_sessions', ['admin_user_id'], unique=False)
    with op.batch_alter_table('api_tokens') as batch_op:
        batch_op.add_column(sa.Column('owner_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f('fk_api_tokens_owner_id_admin_users'), 'admin_users', ['owner_id'], ['id'],
                                    ondelete='SET NULL')
    # Tokens made in the UI recorded their maker's username in created_by (the CLI wrote "cli").
    op.execute("UPDATE api_tokens SET owner_id = (SELECT admin_users.id FROM admin_users "
               "WHERE lower(admin_users.username) = lower(api_tokens.created_by))")
    with op.batch_alter_table('admin_users') as batch_op:
        batch_op.drop_column('session_generation')


def downgrade():
    with op.batch_alter_table('admin_users') as batch_op:
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('api_tokens') as batch_op:
        batch_op.drop_constraint(op.f('fk_api_tokens_owner_id_admin_users'), type_='foreignkey')
        batch_op.drop_column('owner_id')
    op.drop_index(op.f('ix_admin_sessions_admin_user_id'), table_name='admin_sessions')
    op.drop_table('admin_sessions')
