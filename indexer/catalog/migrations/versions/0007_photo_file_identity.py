"""photo_files: the resolved path, device and inode of each path as indexed

A served file must still be the file that was indexed (size and mtime alone are easy to forge), so every
path row records what it resolved to and the file's device and inode (``indexer.file_identity``). Existing
rows get NULLs: the next index run hashes those files once to record them, and until then a reader vouches
for such a file by its content hash.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('photo_files', sa.Column('real_path_bytes', sa.LargeBinary(), nullable=True))
    op.add_column('photo_files', sa.Column('device', sa.BigInteger(), nullable=True))
    op.add_column('photo_files', sa.Column('inode', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('photo_files') as batch:
        batch.drop_column('inode')
        batch.drop_column('device')
        batch.drop_column('real_path_bytes')
