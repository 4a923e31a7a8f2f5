"""moderation: decision history outlives its photo (no cascade; sha256 per row); exact scores in the current state

* ``moderation_decisions.photo_id`` loses its foreign key (it was ON DELETE CASCADE, so deleting a photo
  erased its audit trail) and each row gains ``photo_sha256``, which still identifies the photo after it is
  deleted (SQLite may hand a deleted photo's id to the next photo). Existing rows are back-filled.
* ``moderation_state`` gains ``scores`` (the photo's exact float32 concept scores) and ``scores_policy_id``
  (the policy version whose concept layout they follow), so a re-evaluation whose prompts did not change
  re-decides from them instead of re-reading every stored vector. NULL means "score from the vector".

On SQLite the decisions table is rebuilt once (batch mode). Dropping the old table with foreign keys on would
cascade into ``moderation_state`` (its ``decision_id`` references it), and ``PRAGMA foreign_keys`` cannot be
switched off inside the migration's transaction, so the state rows are copied aside and put back.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_STATE_COLUMNS = "photo_id, decision_id, action, hits, review"
_FK_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _photo_fk_name(bind) -> str | None:
    for fk in sa.inspect(bind).get_foreign_keys('moderation_decisions'):
        if fk['constrained_columns'] == ['photo_id'] and fk['referred_table'] == 'photos':
            return fk.get('name') or 'fk_moderation_decisions_photo_id_photos'
    return None


def _keeping_state(change) -> None:
    """Run ``change`` (a batch alteration of moderation_decisions) without losing moderation_state rows."""
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute(f"CREATE TEMPORARY TABLE _moderation_state_kept AS SELECT {_STATE_COLUMNS} FROM moderation_state")
    change()
    if sqlite:
        op.execute("DELETE FROM moderation_state")
        op.execute(f"INSERT INTO moderation_state ({_STATE_COLUMNS}) SELECT {_STATE_COLUMNS} "
                   "FROM _moderation_state_kept")
        op.execute("DROP TABLE _moderation_state_kept")


def upgrade() -> None:
    op.add_column('moderation_decisions', sa.Column('photo_sha256', sa.String(length=64), nullable=True))
    op.execute("UPDATE moderation_decisions SET photo_sha256 = COALESCE("
               "(SELECT photos.sha256 FROM photos WHERE photos.id = moderation_decisions.photo_id), '')")
    fk_name = _photo_fk_name(op.get_bind())

    def change() -> None:
        with op.batch_alter_table('moderation_decisions', naming_convention=_FK_NAMES) as batch:
            if fk_name is not None:
                batch.drop_constraint(fk_name, type_='foreignkey')
            batch.alter_column('photo_sha256', existing_type=sa.String(length=64), nullable=False)
            batch.create_index('ix_moderation_decisions_photo_sha256', ['photo_sha256', 'id'], unique=False)

    _keeping_state(change)
    op.add_column('moderation_state', sa.Column('scores', sa.LargeBinary(), nullable=True))
    op.add_column('moderation_state', sa.Column('scores_policy_id', sa.Integer(), nullable=True))


def downgrade() -> None:
    """Back to 0005 (lossy: history rows whose photo is gone or was replaced cannot satisfy the old cascade)."""
    op.drop_column('moderation_state', 'scores_policy_id')
    op.drop_column('moderation_state', 'scores')
    op.execute("DELETE FROM moderation_decisions WHERE photo_sha256 <> COALESCE("
               "(SELECT photos.sha256 FROM photos WHERE photos.id = moderation_decisions.photo_id), '-')")

    def change() -> None:
        with op.batch_alter_table('moderation_decisions', naming_convention=_FK_NAMES) as batch:
            batch.drop_index('ix_moderation_decisions_photo_sha256')
            batch.drop_column('photo_sha256')
            batch.create_foreign_key('fk_moderation_decisions_photo_id_photos', 'photos', ['photo_id'], ['id'],
                                     ondelete='CASCADE')

    _keeping_state(change)
