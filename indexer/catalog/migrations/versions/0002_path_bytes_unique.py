"""photo_files keyed on path_bytes

The text ``path`` is a display form (undecodable bytes as ``\\xNN``) and is not injective: the
raw name b"a_\\xff.jpg" and the literal name "a_\\\\xff.jpg" share it. Uniqueness moves to the
exact file-system name ``path_bytes``; ``path`` stays as an indexed, non-unique column.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# SQLite keeps 0001's unique constraints unnamed; batch mode names reflected ones by this convention.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _unique_name(column: str) -> str:
    """Name of the single-column unique constraint on ``photo_files.column`` (named by NAMING if unnamed)."""
    for uc in sa.inspect(op.get_bind()).get_unique_constraints('photo_files'):
        if uc['column_names'] == [column]:
            return uc['name'] or f"uq_photo_files_{column}"
    raise RuntimeError(f"no unique constraint on photo_files.{column}")


def upgrade() -> None:
    old = _unique_name('path')
    with op.batch_alter_table('photo_files', schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(old, type_='unique')
        batch_op.create_unique_constraint('uq_photo_files_path_bytes', ['path_bytes'])
        batch_op.create_index(batch_op.f('ix_photo_files_path'), ['path'], unique=False)


def downgrade() -> None:
    # fails if two rows share a display path, which only this revision allows
    with op.batch_alter_table('photo_files', schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_index(batch_op.f('ix_photo_files_path'))
        batch_op.drop_constraint('uq_photo_files_path_bytes', type_='unique')
        batch_op.create_unique_constraint('photo_files_path_key', ['path'])
