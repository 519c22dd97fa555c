"""collections: a generation number that every write bumps, and the setup a collection was built with;
documents.path_bytes: the file name as the file system gave it, where that is not UTF-8

Another process (the CLI, while `mmrag serve` runs) writes to the same database: readers compare the
generation they loaded with this row's before answering, and reload what changed. File names that are not
UTF-8 are stored in `path` in a printable form (invalid bytes as \\xNN) and, byte for byte, in `path_bytes`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("setup", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )
    # Collections that exist already: one row each, at generation 1 (their indexes were saved at 0).
    op.execute(
        "INSERT INTO collections (name, generation) "
        "SELECT collection, 1 FROM spaces UNION SELECT collection, 1 FROM documents"
    )
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("path_bytes", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("path_bytes")
    op.drop_table("collections")
