"""moderation: policy versions, runs, append-only decision history, current state

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('moderation_policies',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('encoder_spec_id', sa.String(length=512), nullable=False),
    sa.Column('weights', sa.LargeBinary(), nullable=False),
    sa.Column('calibration', sa.Text(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_moderation_policy_version')
    )
    op.create_index('uq_moderation_policies_one_active', 'moderation_policies', ['active'], unique=True,
                    sqlite_where=sa.text('active'), postgresql_where=sa.text('active'))

    op.create_table('moderation_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('photos', sa.Integer(), nullable=False),
    sa.Column('changed', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['moderation_policies.id']),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_moderation_runs_policy_id', 'moderation_runs', ['policy_id'], unique=False)

    op.create_table('moderation_decisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('hits', sa.Text(), nullable=False),
    sa.Column('review', sa.Text(), nullable=False),
    sa.Column('adjusted', sa.Boolean(), nullable=False),
    sa.Column('scores', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_id'], ['moderation_policies.id']),
    sa.ForeignKeyConstraint(['run_id'], ['moderation_runs.id']),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_moderation_decisions_photo', 'moderation_decisions', ['photo_id', 'id'], unique=False)
    op.create_index('ix_moderation_decisions_policy_id', 'moderation_decisions', ['policy_id'], unique=False)
    op.create_index('ix_moderation_decisions_run_id', 'moderation_decisions', ['run_id'], unique=False)
    op.create_index('ix_moderation_decisions_action', 'moderation_decisions', ['action'], unique=False)

    op.create_table('moderation_state',
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('decision_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('hits', sa.Text(), nullable=False),
    sa.Column('review', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['decision_id'], ['moderation_decisions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('photo_id')
    )
    op.create_index('ix_moderation_state_decision_id', 'moderation_state', ['decision_id'], unique=False)
    op.create_index('ix_moderation_state_action', 'moderation_state', ['action'], unique=False)


def downgrade() -> None:
    op.drop_table('moderation_state')
    op.drop_table('moderation_decisions')
    op.drop_table('moderation_runs')
    op.drop_index('uq_moderation_policies_one_active', table_name='moderation_policies')
    op.drop_table('moderation_policies')
